//! The set of every event id ever stored (as 128-bit keys, `event_key`), in bounded memory.
//!
//! A hash set of 10 M keys is about 280 MB of anonymous memory, growing for ever. Instead,
//! recent keys sit in a small hash set, and older ones in a few immutable sorted runs (mapped
//! files, see `store::column`), like the levels of an LSM tree. Each run has a table of where
//! each range of leading bits starts (about eight keys per range, so a lookup reads one or two
//! cache lines of keys) and a blocked bloom filter (one cache line per lookup), so a new key,
//! the common case, is ruled out of a run by one cache line.
//!
//! A run keeps each key's top 96 bits (`RunKey`), 12 bytes where the whole key took 16: two
//! keys that differ only in their low 32 bits would be taken for one, a chance of about one in
//! 2^96 / n per lookup among n keys (below 10^-19 at a billion). A run with 2^16 ranges or
//! more (half a million keys and up: every flushed run) stores only the 80 bits below each
//! key's top 16, which its range gives (`NarrowKey`, 10 bytes).
//!
//! When the recent set reaches `FLUSH` keys, or at a checkpoint, it is sorted into a new run.
//! Runs merge in the background when the newer ones add up to at least half of the one before
//! them (`MERGE_RATIO`), so run sizes grow geometrically: at 31 M keys there are about three,
//! and each key is rewritten a few times over its life, where one sorted column rewritten at
//! every merge copied all the keys each time (quadratic in the data). A merge reads the runs
//! it replaces without any lock and swaps its result in under the write lock.

use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::thread::JoinHandle;

use hashbrown::HashSet;

use super::writer::IdHasher;
use crate::core::engine::entry::Verification;
use crate::core::store::column::{Column, ColumnSpace};
use crate::core::store::segment::{ColumnRef, SeenRunRef, open_column, save_column};
use crate::error::{Error, Result};
use crate::storage::files::io_error;

/// Recent keys become a run at this many.
const FLUSH: usize = 1 << 20;
/// Runs from the newest back merge while the run before them holds at most this many times
/// their keys.
const MERGE_RATIO: usize = 2;
/// Bloom filter bits per key and bits set per key: about 1% false positives (blocked).
const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_PROBES: u32 = 7;
/// A bloom block is one 64-byte cache line.
const BLOCK_WORDS: usize = 8;
/// The index column starts with the run's range bits and key count.
const HEADER: usize = 2;
const MAX_RANGE_BITS: u32 = 24;

/// A key as a run stores it: its top 96 bits, most significant word first, so that arrays
/// order as the keys do.
type RunKey = [u32; 3];

fn run_key(key: u128) -> RunKey {
    [(key >> 96) as u32, (key >> 64) as u32, (key >> 32) as u32]
}

/// A hash set of keys (a batch's or a group's).
pub type KeySet = HashSet<u128, BuildHasherDefault<IdHasher>>;

/// The writer's id set, shared so that ingestion can ask whether an id was stored before the
/// tracking plan judges it. Only the writer thread (and the merge it starts) changes it.
pub type SharedIds = Arc<parking_lot::RwLock<SeenIds>>;

#[derive(Debug)]
pub struct SeenIds {
    recent: KeySet,
    /// Oldest first. Every key is in exactly one run or in `recent`.
    runs: Vec<Arc<Run>>,
    /// Where runs get their files (none: in memory).
    space: Option<Arc<ColumnSpace>>,
    /// Flushes of the recent keys into a run so far: while it has not moved, every key added
    /// since is in `recent` (see `added_since`).
    flushes: u64,
    /// Flush when `recent` holds this many keys (`FLUSH`, or more after a flush failed, so a
    /// failing disk is not retried for every key).
    flush_at: usize,
    /// The check of the loaded runs' files, which every read of them waits for: a start opens
    /// the port before it ends, and only ingestion needs the runs (see `checked_by`).
    check: Option<Arc<Verification>>,
}

impl Default for SeenIds {
    fn default() -> Self {
        SeenIds::in_space(None)
    }
}

/// Sorted, distinct keys and their index: `[range_bits, key count, starts (2^range_bits + 1
/// entries: range r is keys[starts[r]..starts[r + 1]]), bloom blocks]`.
#[derive(Debug)]
pub struct Run {
    keys: RunKeys,
    index: Column<u64>,
    range_bits: u32,
    bloom_blocks: usize,
}

/// A run's keys: whole `RunKey`s, or (with at least `NARROW_RANGE_BITS` range bits, so every
/// run of half a million keys or more) only the 80 bits below the top 16, which the key's
/// range gives: 10 bytes a key instead of 12.
#[derive(Debug)]
enum RunKeys {
    Whole(Column<RunKey>),
    Narrow(Column<NarrowKey>),
}

/// A key's 80 bits below its top 16, most significant first (arrays order as the keys do).
type NarrowKey = [u16; 5];
const NARROW_RANGE_BITS: u32 = 16;

fn narrow(key: RunKey) -> NarrowKey {
    [key[0] as u16, (key[1] >> 16) as u16, key[1] as u16, (key[2] >> 16) as u16, key[2] as u16]
}

/// The key whose top 16 bits are `top` and whose 80 bits below are `low`.
fn widen(top: u32, low: NarrowKey) -> RunKey {
    let word = |high: u16, low: u16| (u32::from(high) << 16) | u32::from(low);
    [(top << 16) | u32::from(low[0]), word(low[1], low[2]), word(low[3], low[4])]
}

fn range_bits_for(len: usize) -> u32 {
    let ranges = (len / 8).max(1);
    ranges.ilog2().min(MAX_RANGE_BITS)
}

fn bloom_blocks_for(len: usize) -> usize {
    (len * BLOOM_BITS_PER_KEY).div_ceil(BLOCK_WORDS * 64).max(1)
}

fn index_len(range_bits: u32, bloom_blocks: usize) -> usize {
    HEADER + (1 << range_bits) + 1 + bloom_blocks * BLOCK_WORDS
}

fn range_of(key: RunKey, bits: u32) -> usize {
    // At most MAX_RANGE_BITS (< 32) leading bits: all in the first word.
    if bits == 0 { 0 } else { (key[0] >> (32 - bits)) as usize }
}

/// The bloom block of `key`, from its high 64 bits: in key order the blocks ascend, so
/// building a run's filter from its sorted keys writes memory in order, not at random.
fn bloom_block(key: RunKey, blocks: usize) -> usize {
    let high = (u64::from(key[0]) << 32) | u64::from(key[1]);
    ((u128::from(high) * blocks as u128) >> 64) as usize
}

/// Asks the CPU to bring `value`'s cache line in, without waiting for it (a hint: nowhere but
/// on x86-64 does it do anything).
#[inline]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault; `value` is a valid
    // reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((value as *const T).cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The (word, mask) of each bit `key` sets in its block, from its low 64 bits (remixed).
fn bloom_probes(key: RunKey) -> impl Iterator<Item = (usize, u64)> {
    let low = (u64::from(key[1]) << 32) | u64::from(key[2]);
    let bits = low.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..BLOOM_PROBES).map(move |i| {
        let bit = (bits >> (i * 9)) & 511;
        ((bit >> 6) as usize, 1u64 << (bit & 63))
    })
}

fn new_column<T: bytemuck::Pod>(space: Option<&Arc<ColumnSpace>>) -> Result<Column<T>> {
    match space {
        Some(space) => space.try_column().map_err(|(path, e)| io_error("cannot create", &path, e)),
        None => Ok(Column::memory()),
    }
}

/// Keys written to a run in batches (a file column grows by its appends).
const WRITE_BATCH: usize = 1 << 16;

impl Run {
    /// A run of `keys` (in any order).
    fn of_keys(space: Option<&Arc<ColumnSpace>>, keys: impl IntoIterator<Item = u128>) -> Result<Run> {
        let mut keys: Vec<RunKey> = keys.into_iter().map(run_key).collect();
        keys.sort_unstable();
        keys.dedup();
        Run::from_sorted(space, &keys)
    }

    /// A run of `keys` (sorted, distinct).
    fn from_sorted(space: Option<&Arc<ColumnSpace>>, keys: &[RunKey]) -> Result<Run> {
        Run::build(space, keys.len(), keys.iter().copied())
    }

    /// The run of every key of `runs` (disjoint), merged in order.
    fn merged(space: Option<&Arc<ColumnSpace>>, runs: &[Arc<Run>]) -> Result<Run> {
        let mut heads: Vec<_> = runs.iter().map(|run| run.keys().peekable()).collect();
        let merged = std::iter::from_fn(|| {
            let least = heads.iter_mut().filter_map(|head| head.peek().copied()).min()?;
            // Runs are disjoint; should two ever share a key, it is kept once.
            for head in &mut heads {
                head.next_if_eq(&least);
            }
            Some(least)
        });
        Run::build(space, runs.iter().map(|r| r.len()).sum(), merged)
    }

    /// A run of `keys` (sorted, distinct), laid out for at most `most` of them.
    fn build(space: Option<&Arc<ColumnSpace>>, most: usize, keys: impl Iterator<Item = RunKey>) -> Result<Run> {
        Run::build_with(space, keys, range_bits_for(most), bloom_blocks_for(most))
    }

    /// `build` with the given layout: narrow keys with at least `NARROW_RANGE_BITS` range bits.
    fn build_with(
        space: Option<&Arc<ColumnSpace>>,
        keys: impl Iterator<Item = RunKey>,
        range_bits: u32,
        bloom_blocks: usize,
    ) -> Result<Run> {
        let mut out = if range_bits >= NARROW_RANGE_BITS {
            RunKeys::Narrow(new_column(space)?)
        } else {
            RunKeys::Whole(new_column(space)?)
        };
        let mut index: Column<u64> = new_column(space)?;
        // Filled in place: no copy of the (tens of MB) index in anonymous memory.
        index.resize_zeroed(index_len(range_bits, bloom_blocks));
        let slots = index.as_mut_slice();
        let (header, rest) = slots.split_at_mut(HEADER);
        let (starts, bloom) = rest.split_at_mut((1 << range_bits) + 1);
        // `starts[..=range]` are set: the ranges before the last key's and that one.
        let (mut count, mut range) = (0usize, 0usize);
        let mut batch = Vec::new();
        let mut write = |batch: &mut Vec<RunKey>| {
            match &mut out {
                RunKeys::Whole(column) => column.extend_from_slice(batch),
                RunKeys::Narrow(column) => {
                    let narrowed: Vec<NarrowKey> = batch.iter().map(|&key| narrow(key)).collect();
                    column.extend_from_slice(&narrowed);
                }
            }
            batch.clear();
        };
        for key in keys {
            let r = range_of(key, range_bits);
            while range < r {
                range += 1;
                starts[range] = count as u64;
            }
            let block = &mut bloom[bloom_block(key, bloom_blocks) * BLOCK_WORDS..][..BLOCK_WORDS];
            for (word, mask) in bloom_probes(key) {
                block[word] |= mask;
            }
            batch.push(key);
            count += 1;
            if batch.len() == WRITE_BATCH {
                write(&mut batch);
            }
        }
        write(&mut batch);
        starts[range + 1..].fill(count as u64);
        header.copy_from_slice(&[u64::from(range_bits), count as u64]);
        // A run never grows: its files keep no reserved blocks.
        let path = |name: Option<&str>| match (space, name) {
            (Some(space), Some(name)) => space.dir().join(name),
            _ => Default::default(),
        };
        let keys_path = path(out.file_name());
        let index_path = path(index.file_name());
        out.release_reserve().map_err(|e| io_error("cannot shrink", &keys_path, e))?;
        index.release_reserve().map_err(|e| io_error("cannot shrink", &index_path, e))?;
        Ok(Run { keys: out, index, range_bits, bloom_blocks })
    }

    /// The run a checkpoint listed, its index checked for consistency with its keys. A run of
    /// whole keys (16 bytes each, before manifest version 3) becomes a run of `RunKey`s, and
    /// one of 12-byte keys that would be narrow now (before version 4) a narrow one.
    fn open(space: &Arc<ColumnSpace>, listed: &SeenRunRef) -> Result<Run> {
        let key_bytes = listed.keys.bytes.checked_div(listed.keys.len).unwrap_or(0) as usize;
        if key_bytes == size_of::<u128>() {
            return Run::of_sorted_whole_keys(space, &listed.keys);
        }
        let index: Column<u64> = open_column(space, &listed.index)?;
        let corrupt = || Error::Storage(format!("the checkpointed dedupe index {} is corrupt", listed.index.file));
        // The layout comes from the header and the length, not from today's constants, so a
        // change of them keeps older runs readable.
        let (range_bits, count) = match index.get(..HEADER) {
            Some(&[bits, count]) if bits <= 40 => (bits as u32, count),
            _ => return Err(corrupt()),
        };
        let keys = if key_bytes == size_of::<NarrowKey>() {
            if range_bits < NARROW_RANGE_BITS {
                return Err(corrupt());
            }
            RunKeys::Narrow(open_column(space, &listed.keys)?)
        } else {
            RunKeys::Whole(open_column(space, &listed.keys)?)
        };
        let bloom_words = index.len().checked_sub(HEADER + (1usize << range_bits) + 1).ok_or_else(corrupt)?;
        let bloom_blocks = bloom_words / BLOCK_WORDS;
        if count != keys.len() as u64 || bloom_blocks == 0 || !bloom_words.is_multiple_of(BLOCK_WORDS) {
            return Err(corrupt());
        }
        let starts = &index[HEADER..HEADER + (1 << range_bits) + 1];
        if starts[0] != 0 || starts.last() != Some(&(keys.len() as u64)) || !starts.is_sorted() {
            return Err(corrupt());
        }
        let run = Run { keys, index, range_bits, bloom_blocks };
        if matches!(run.keys, RunKeys::Whole(_)) && range_bits_for(run.len()) >= NARROW_RANGE_BITS {
            return Run::build(Some(space), run.len(), run.keys());
        }
        Ok(run)
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys in order.
    fn keys(&self) -> Box<dyn Iterator<Item = RunKey> + '_> {
        match &self.keys {
            RunKeys::Whole(keys) => Box::new(keys.iter().copied()),
            RunKeys::Narrow(keys) => {
                let starts = &self.index[HEADER..HEADER + (1 << self.range_bits) + 1];
                let shift = self.range_bits - NARROW_RANGE_BITS;
                Box::new(starts.windows(2).enumerate().flat_map(move |(r, span)| {
                    let top = (r >> shift) as u32;
                    keys[span[0] as usize..span[1] as usize].iter().map(move |&low| widen(top, low))
                }))
            }
        }
    }

    /// A run of the sorted whole keys in `listed` (what checkpoints before version 3 wrote).
    fn of_sorted_whole_keys(space: &Arc<ColumnSpace>, listed: &ColumnRef) -> Result<Run> {
        let keys: Column<u128> = open_column(space, listed)?;
        if !keys.is_sorted_by(|a, b| a < b) {
            return Err(Error::Storage(format!("the checkpointed dedupe keys {} are not sorted", listed.file)));
        }
        let mut keys: Vec<RunKey> = keys.iter().map(|&key| run_key(key)).collect();
        keys.dedup();
        Run::from_sorted(Some(space), &keys)
    }

    fn contains(&self, key: u128) -> bool {
        let key = run_key(key);
        let index = self.index.as_slice();
        let bloom_at = HEADER + (1 << self.range_bits) + 1;
        let block = &index[bloom_at + bloom_block(key, self.bloom_blocks) * BLOCK_WORDS..][..BLOCK_WORDS];
        if bloom_probes(key).any(|(word, mask)| block[word] & mask == 0) {
            return false;
        }
        let r = HEADER + range_of(key, self.range_bits);
        let span = index[r] as usize..index[r + 1] as usize;
        match &self.keys {
            RunKeys::Whole(keys) => keys[span].binary_search(&key).is_ok(),
            RunKeys::Narrow(keys) => keys[span].binary_search(&narrow(key)).is_ok(),
        }
    }

    /// Sets `found[i]` for each key of `keys` not found yet that this run holds: `contains`
    /// over a batch, fetching the bloom block of a key a few ahead while one is checked, so
    /// that the cache misses of a batch's lookups overlap instead of following one another.
    fn find_each(&self, keys: &[u128], found: &mut [bool]) {
        const AHEAD: usize = 16;
        let bloom_at = HEADER + (1 << self.range_bits) + 1;
        let index = self.index.as_slice();
        let block_of = |key: u128| &index[bloom_at + bloom_block(run_key(key), self.bloom_blocks) * BLOCK_WORDS];
        let pending: Vec<usize> = (0..keys.len()).filter(|&i| !found[i]).collect();
        for (n, &i) in pending.iter().enumerate() {
            if let Some(&ahead) = pending.get(n + AHEAD) {
                prefetch(block_of(keys[ahead]));
            }
            found[i] = self.contains(keys[i]);
        }
    }

    fn save(&self, space: &ColumnSpace) -> Result<SeenRunRef> {
        let keys = match &self.keys {
            RunKeys::Whole(keys) => save_column(keys, space)?,
            RunKeys::Narrow(keys) => save_column(keys, space)?,
        };
        Ok(SeenRunRef { keys, index: save_column(&self.index, space)? })
    }
}

impl RunKeys {
    fn len(&self) -> usize {
        match self {
            RunKeys::Whole(keys) => keys.len(),
            RunKeys::Narrow(keys) => keys.len(),
        }
    }

    fn file_name(&self) -> Option<&str> {
        match self {
            RunKeys::Whole(keys) => keys.file_name(),
            RunKeys::Narrow(keys) => keys.file_name(),
        }
    }

    fn release_reserve(&mut self) -> std::io::Result<()> {
        match self {
            RunKeys::Whole(keys) => keys.release_reserve(),
            RunKeys::Narrow(keys) => keys.release_reserve(),
        }
    }
}

impl SeenIds {
    /// An empty set whose runs live in files of `space` (or in memory).
    pub fn in_space(space: Option<&Arc<ColumnSpace>>) -> SeenIds {
        SeenIds {
            recent: KeySet::default(),
            runs: Vec::new(),
            space: space.cloned(),
            flushes: 0,
            flush_at: FLUSH,
            check: None,
        }
    }

    /// Makes every read of the runs wait for `check` (of their files, running in the
    /// background), and panic when it fails: a key read from a bad file could drop a new event
    /// as a duplicate, or store one twice.
    pub fn checked_by(&mut self, check: Arc<Verification>) {
        self.check = Some(check);
    }

    /// The runs, once their files passed their check.
    fn runs(&self) -> &[Arc<Run>] {
        if let Some(check) = &self.check {
            check.wait();
        }
        &self.runs
    }

    pub fn len(&self) -> usize {
        self.recent.len() + self.runs.iter().map(|r| r.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, key: &u128) -> bool {
        self.recent.contains(key) || self.runs().iter().rev().any(|run| run.contains(*key))
    }

    /// `contains` of each key, for a batch: the runs' lookups, memory-bound (a tenth of the
    /// server's ingest time at 31 M ids), overlap their cache misses (`Run::find_each`).
    pub fn contains_each(&self, keys: &[u128]) -> Vec<bool> {
        let mut found: Vec<bool> = keys.iter().map(|key| self.recent.contains(key)).collect();
        // As `contains`: the runs (and their check, see `runs`) only for keys not recent.
        if !found.contains(&false) {
            return found;
        }
        for run in self.runs().iter().rev() {
            run.find_each(keys, &mut found);
        }
        found
    }

    /// A mark to check keys against later with `added_since`: the flushes so far.
    pub fn mark(&self) -> u64 {
        self.flushes
    }

    /// Whether `key`, absent when `mark` gave `since`, has been added since: one hash probe
    /// while no flush has moved recent keys into a run, else a full `contains`.
    pub fn added_since(&self, key: &u128, since: u64) -> bool {
        if since == self.flushes { self.recent.contains(key) } else { self.contains(key) }
    }

    /// Adds `key`; false when it was already there. Flushes and merges in the caller's thread
    /// when due (the replay at start; the writer uses `extend` and `flush_if_due`).
    pub fn insert(&mut self, key: u128) -> bool {
        if self.contains(&key) {
            return false;
        }
        self.recent.insert(key);
        if self.flush_due()
            && let Err(err) = self.flush_and_merge()
        {
            self.flush_failed(&err);
        }
        true
    }

    /// Adds keys known to be new (the writer's synced group).
    pub fn extend(&mut self, keys: impl IntoIterator<Item = u128>) {
        self.recent.extend(keys);
    }

    fn flush_due(&self) -> bool {
        self.recent.len() >= self.flush_at
    }

    /// A run's file could not be made: the keys stay in the recent set, and the next try
    /// waits for `FLUSH` more of them.
    fn flush_failed(&mut self, err: &Error) {
        self.flush_at = self.recent.len() + FLUSH;
        tracing::error!(error = %err, keys = self.recent.len(), "cannot write a run of dedupe keys; keeping them in memory");
    }

    /// The recent keys as a run, made without changing the set (`add_flushed` adds it).
    fn flushed(&self) -> Result<Run> {
        Run::of_keys(self.space.as_ref(), self.recent.iter().copied())
    }

    /// Replaces the recent keys by `run`, made from them by `flushed` since the last change.
    fn add_flushed(&mut self, run: Run) {
        debug_assert_eq!(run.len(), self.recent.len(), "the recent keys changed since the flush");
        self.runs.push(Arc::new(run));
        // Emptied, not replaced: the set fills to `FLUSH` keys again, and growing a new one
        // there rehashed it a dozen times (a tenth of the writer's time in a profile).
        self.recent.clear();
        // No more than `FLUSH` keys' room kept, should a failed flush have grown it past that.
        self.recent.shrink_to(FLUSH);
        self.flushes += 1;
        self.flush_at = FLUSH;
    }

    /// The newest runs that are due to merge (see `MERGE_RATIO`), when there are two or more.
    fn merge_inputs(&self) -> Option<Vec<Arc<Run>>> {
        let runs = self.runs();
        let last = runs.len().checked_sub(1)?;
        let (mut from, mut keys) = (last, runs[last].len());
        while from > 0 && runs[from - 1].len() <= keys * MERGE_RATIO {
            from -= 1;
            keys += runs[from].len();
        }
        (from < last).then(|| runs[from..].to_vec())
    }

    /// Puts `merged` in place of `inputs`, which must still be runs of the set, in order.
    fn replace_runs(&mut self, inputs: &[Arc<Run>], merged: Run) -> bool {
        let at = self.runs.windows(inputs.len()).position(|w| w.iter().zip(inputs).all(|(a, b)| Arc::ptr_eq(a, b)));
        let Some(at) = at else {
            return false;
        };
        self.runs.splice(at..at + inputs.len(), [Arc::new(merged)]);
        true
    }

    /// Flushes the recent keys and merges the runs as due, in this thread.
    fn flush_and_merge(&mut self) -> Result<()> {
        if !self.recent.is_empty() {
            let run = self.flushed()?;
            self.add_flushed(run);
        }
        while let Some(inputs) = self.merge_inputs() {
            let merged = Run::merged(self.space.as_ref(), &inputs)?;
            self.replace_runs(&inputs, merged);
        }
        Ok(())
    }

    /// The set a checkpoint saved.
    pub fn load(space: &Arc<ColumnSpace>, runs: &[SeenRunRef]) -> Result<SeenIds> {
        let runs = runs.iter().map(|run| Run::open(space, run).map(Arc::new)).collect::<Result<_>>()?;
        Ok(SeenIds { runs, ..SeenIds::in_space(Some(space)) })
    }

    /// The set a version-1 checkpoint saved: one sorted column of whole keys (its range table
    /// is not needed), copied into a run.
    pub fn load_sorted(space: &Arc<ColumnSpace>, sorted: &ColumnRef) -> Result<SeenIds> {
        let mut ids = SeenIds::in_space(Some(space));
        if sorted.len > 0 {
            ids.runs.push(Arc::new(Run::of_sorted_whole_keys(space, sorted)?));
        }
        Ok(ids)
    }
}

/// The dedupe set as a checkpoint lists it. Holding it keeps the runs' files: a merge that
/// replaces them meanwhile must not delete a file before the manifest listing it pins it.
pub struct SavedRuns {
    pub listed: Vec<SeenRunRef>,
    _runs: Vec<Arc<Run>>,
}

/// The dedupe set at a checkpoint's cut: its runs, and a copy of its recent keys, which
/// `SeenCut::save` makes a run of their own for the checkpoint (off the writer's path; the
/// set keeps its recent keys and flushes them when due).
pub struct SeenCut {
    runs: Vec<Arc<Run>>,
    recent: Vec<u128>,
}

/// Takes a checkpoint's cut of the set; the caller makes sure no key is added meanwhile (the
/// writer waits for it).
pub fn cut(seen: &SharedIds, space: &Arc<ColumnSpace>) -> Result<SeenCut> {
    if seen.read().space.is_none() {
        // A set made in memory (no space at start) moves to files now.
        let mut ids = seen.write();
        let moved = ids.runs.iter().map(|run| Run::build(Some(space), run.len(), run.keys()).map(Arc::new));
        ids.runs = moved.collect::<Result<_>>()?;
        ids.space = Some(space.clone());
    }
    let ids = seen.read();
    Ok(SeenCut { runs: ids.runs().to_vec(), recent: ids.recent.iter().copied().collect() })
}

impl SeenCut {
    /// Makes the recent keys a run and describes every run, synced, for the manifest.
    pub fn save(self, space: &Arc<ColumnSpace>) -> Result<SavedRuns> {
        let mut runs = self.runs;
        if !self.recent.is_empty() {
            runs.push(Arc::new(Run::of_keys(Some(space), self.recent)?));
        }
        let listed = runs.iter().map(|run| run.save(space)).collect::<Result<_>>()?;
        Ok(SavedRuns { listed, _runs: runs })
    }
}

/// Flushes the writer's recent keys into a run when due, building it while readers go on
/// (they wait only for the swap). A run whose file cannot be created leaves the keys in
/// memory (see `flush_failed`); one whose file cannot grow stops the process like any durable
/// column (`column::fatal`): the log holds the keys' events, and a restart rebuilds them.
pub fn flush_if_due(seen: &SharedIds) {
    if !seen.read().flush_due() {
        return;
    }
    match flushed_unlocked(seen) {
        Ok(run) => seen.write().add_flushed(run),
        Err(err) => seen.write().flush_failed(&err),
    }
}

/// `SeenIds::flushed` for the writer thread (the only one that changes the recent keys, so
/// the copy stays theirs until `add_flushed`): only copying them holds the read lock, not the
/// sort and the file. A merge waiting for the write lock would otherwise hold back every
/// reader (the lock is fair) for as long as a sort of a million keys.
fn flushed_unlocked(seen: &SharedIds) -> Result<Run> {
    let (keys, space): (Vec<u128>, _) = {
        let ids = seen.read();
        (ids.recent.iter().copied().collect(), ids.space.clone())
    };
    Run::of_keys(space.as_ref(), keys)
}

/// Runs merges of the dedupe runs in a background thread, one at a time.
#[derive(Default)]
pub struct Merger {
    running: Option<JoinHandle<()>>,
}

impl Merger {
    /// Starts a merge when one is due and none is running.
    pub fn start_if_due(&mut self, seen: &SharedIds) {
        if self.running.as_ref().is_some_and(|thread| !thread.is_finished()) {
            return;
        }
        self.finish();
        let (space, inputs) = {
            let ids = seen.read();
            let Some(inputs) = ids.merge_inputs() else {
                return;
            };
            (ids.space.clone(), inputs)
        };
        let seen = seen.clone();
        let spawned = std::thread::Builder::new().name("sextant-dedupe-merge".into()).spawn(move || {
            let started = std::time::Instant::now();
            match Run::merged(space.as_ref(), &inputs) {
                Ok(merged) => {
                    let keys = merged.len();
                    if seen.write().replace_runs(&inputs, merged) {
                        tracing::debug!(
                            runs = inputs.len(),
                            keys,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "dedupe runs merged"
                        );
                    }
                }
                // The file could not be created: the runs stay as they are.
                Err(err) => tracing::error!(error = %err, "cannot merge the dedupe runs; keeping them apart"),
            }
        });
        match spawned {
            Ok(thread) => self.running = Some(thread),
            Err(err) => tracing::error!(error = %err, "cannot start a merge of the dedupe runs"),
        }
    }

    /// Waits for the running merge, if any.
    pub fn finish(&mut self) {
        if let Some(thread) = self.running.take()
            && thread.join().is_err()
        {
            tracing::error!("the dedupe merge thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u64) -> u128 {
        crate::core::store::record::event_key("p", &i.to_string())
    }

    fn run_lens(ids: &SeenIds) -> Vec<usize> {
        ids.runs.iter().map(|r| r.len()).collect()
    }

    #[test]
    fn keys_stay_members_across_flushes_and_merges() {
        let mut ids = SeenIds::default();
        for i in 0..1000 {
            assert!(ids.insert(key(i)));
        }
        ids.flush_and_merge().unwrap();
        assert_eq!((ids.recent.len(), run_lens(&ids)), (0, vec![1000]));
        ids.extend((1000..1400).map(key));
        for i in 0..1400 {
            assert!(ids.contains(&key(i)), "{i}");
            assert!(!ids.insert(key(i)));
        }
        assert!(!ids.contains(&key(1400)));
        ids.flush_and_merge().unwrap();
        // 1000 > 2 × 400: the runs stay apart.
        assert_eq!(run_lens(&ids), vec![1000, 400]);
        assert!((0..1400).all(|i| ids.contains(&key(i))) && !ids.contains(&key(1400)));
        ids.extend((1400..1900).map(key));
        ids.flush_and_merge().unwrap();
        // 400 ≤ 2 × 500 merges, then 1000 ≤ 2 × 900 too.
        assert_eq!(run_lens(&ids), vec![1900]);
        assert!(ids.runs[0].keys().is_sorted_by(|a, b| a < b));
        assert!((0..1900).all(|i| ids.contains(&key(i))) && !ids.contains(&key(1900)));
    }

    #[test]
    fn a_batch_lookup_finds_what_single_lookups_find() {
        let mut ids = SeenIds::default();
        // Three runs of different sizes (newest last) and recent keys, some keys in two runs.
        for range in [0..5000, 4000..6000, 6000..6500] {
            ids.runs.push(Arc::new(Run::of_keys(None, range.map(key)).unwrap()));
        }
        ids.extend((6500..7000).map(key));
        let asked: Vec<u128> = (0..9000).rev().map(key).collect();
        let found = ids.contains_each(&asked);
        assert_eq!(found, asked.iter().map(|k| ids.contains(k)).collect::<Vec<_>>());
        assert_eq!(found.iter().filter(|f| **f).count(), 7000);
        assert_eq!(ids.contains_each(&[]), Vec::<bool>::new());
    }

    #[test]
    fn keys_added_since_a_mark_are_found_with_or_without_a_flush_between() {
        let mut ids = SeenIds::default();
        ids.extend((0..100).map(key));
        ids.flush_and_merge().unwrap();
        let mark = ids.mark();
        assert!(!ids.added_since(&key(100), mark));
        ids.extend([key(100)]);
        assert!(ids.added_since(&key(100), mark), "in the recent keys");
        // An old key is not "added since" by the recent-only probe: the caller checked it
        // absent at the mark, so it cannot be one.
        assert!(!ids.added_since(&key(5), mark));
        ids.flush_and_merge().unwrap();
        assert_ne!(ids.mark(), mark);
        assert!(ids.added_since(&key(100), mark), "moved to a run: the full check finds it");
        assert!(!ids.added_since(&key(101), mark));
    }

    /// Reads of loaded runs wait for their files' check, and refuse to answer once it failed;
    /// keys only in memory need no check.
    #[test]
    fn reads_of_the_runs_wait_for_their_check() {
        let mut ids = SeenIds::default();
        ids.insert(key(1));
        ids.flush_and_merge().unwrap();
        ids.extend([key(2)]);
        let check = Verification::running();
        ids.checked_by(check.clone());
        let ids = Arc::new(ids);
        let (sent, answers) = std::sync::mpsc::channel();
        let reading = {
            let (ids, sent) = (ids.clone(), sent.clone());
            std::thread::spawn(move || sent.send(ids.contains(&key(1))).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(answers.try_recv().is_err(), "a read answered before the check");
        check.finish(Ok(()));
        assert!(answers.recv().unwrap());
        reading.join().unwrap();
        assert!(ids.contains(&key(2)) && !ids.contains(&key(3)));

        let mut failed = SeenIds::default();
        failed.insert(key(1));
        failed.flush_and_merge().unwrap();
        let check = Verification::running();
        failed.checked_by(check.clone());
        check.finish(Err("7.col is corrupt".into()));
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| failed.contains(&key(1)))).unwrap_err();
        assert!(panic.downcast_ref::<String>().unwrap().contains("7.col is corrupt"));
    }

    #[test]
    fn merging_runs_that_share_a_key_keeps_it_once() {
        let keys = |low: &[u32]| low.iter().map(|&k| [0, 0, k]).collect::<Vec<RunKey>>();
        let a = Arc::new(Run::from_sorted(None, &keys(&[1, 5, 9])).unwrap());
        let b = Arc::new(Run::from_sorted(None, &keys(&[5, 6, 9, 10])).unwrap());
        let merged = Run::merged(None, &[a, b]).unwrap();
        assert_eq!(merged.keys().collect::<Vec<_>>(), keys(&[1, 5, 6, 9, 10]));
    }

    #[test]
    fn a_run_saved_with_another_layout_loads_by_its_header_and_a_failed_flush_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::durable_for_tests(dir.path());
        let mut sorted: Vec<RunKey> = (0..1000).map(|i| run_key(key(i))).collect();
        sorted.sort_unstable();
        // Not what today's constants give for 1000 keys (6 range bits, 20 blocks).
        let run = Run::build_with(Some(&space), sorted.iter().copied(), 2, 3).unwrap();
        let listed = run.save(&space).unwrap();
        let loaded = SeenIds::load(&space, &[listed]).unwrap();
        assert_eq!((loaded.runs[0].range_bits, loaded.runs[0].bloom_blocks), (2, 3));
        assert!((0..1000).all(|i| loaded.contains(&key(i))) && !loaded.contains(&key(1000)));

        // No directory for a new run's file: the keys stay recent, the next try waits.
        let mut ids = SeenIds::in_space(Some(&space));
        ids.extend((0..10).map(key));
        std::fs::remove_dir_all(space.dir()).unwrap();
        let err = ids.flushed().unwrap_err();
        ids.flush_failed(&err);
        assert_eq!((ids.recent.len(), ids.flush_at), (10, 10 + FLUSH));
        assert!((0..10).all(|i| ids.contains(&key(i))));
    }

    #[test]
    fn run_sizes_grow_geometrically() {
        let mut ids = SeenIds::default();
        let mut next = 0;
        for _ in 0..31 {
            ids.extend((next..next + 100).map(key));
            next += 100;
            ids.flush_and_merge().unwrap();
            for pair in ids.runs.windows(2) {
                assert!(pair[0].len() > pair[1].len() * MERGE_RATIO, "{:?}", run_lens(&ids));
            }
        }
        assert_eq!(run_lens(&ids), vec![2100, 800, 200]);
        assert_eq!(ids.len(), 3100);
    }

    #[test]
    fn the_bloom_filter_rules_out_most_absent_keys() {
        let keys: Vec<u128> = (0..100_000).map(key).collect();
        let run = Run::of_keys(None, keys.iter().copied()).unwrap();
        let bloom_at = HEADER + (1 << run.range_bits) + 1;
        let index = run.index.as_slice();
        let passes = (100_000..200_000)
            .map(|i| run_key(key(i)))
            .filter(|&k| {
                let block = &index[bloom_at + bloom_block(k, run.bloom_blocks) * BLOCK_WORDS..][..BLOCK_WORDS];
                bloom_probes(k).all(|(word, mask)| block[word] & mask != 0)
            })
            .count();
        // Blocked, 10 bits per key, 7 probes: about 1% (unblocked would be 0.8%).
        assert!(passes < 2_000, "{passes} of 100000 absent keys pass the bloom filter");
        assert!(keys.iter().all(|k| run.contains(*k)));
        assert_eq!(run.range_bits, 13);
    }

    #[test]
    fn a_merge_in_the_background_replaces_its_inputs_and_keeps_later_runs() {
        let seen: SharedIds = Default::default();
        seen.write().extend((0..300).map(key));
        seen.write().flush_and_merge().unwrap();
        seen.write().extend((300..500).map(key));
        let run = seen.read().flushed().unwrap();
        seen.write().add_flushed(run);
        // 300 ≤ 2 × 200: due. A run added while the merge runs stays after the merged one.
        let inputs = seen.read().merge_inputs().unwrap();
        seen.write().extend((500..510).map(key));
        let run = seen.read().flushed().unwrap();
        seen.write().add_flushed(run);
        let merged = Run::merged(None, &inputs).unwrap();
        assert!(seen.write().replace_runs(&inputs, merged));
        assert_eq!(run_lens(&seen.read()), vec![500, 10]);
        // 500 > 2 × 10: nothing due. Then 20 more: 10 ≤ 2 × 20 merges in the background.
        let mut merger = Merger::default();
        merger.start_if_due(&seen);
        merger.finish();
        assert_eq!(run_lens(&seen.read()), vec![500, 10]);
        seen.write().extend((510..530).map(key));
        flush_if_due(&seen);
        assert_eq!(seen.read().recent.len(), 20, "below FLUSH: no flush");
        let run = seen.read().flushed().unwrap();
        seen.write().add_flushed(run);
        merger.start_if_due(&seen);
        merger.finish();
        assert_eq!(run_lens(&seen.read()), vec![500, 30]);
        assert!((0..530).all(|i| seen.read().contains(&key(i))) && !seen.read().contains(&key(530)));
    }

    #[test]
    fn runs_saved_to_files_load_back_and_a_version_1_column_becomes_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::durable_for_tests(dir.path());
        let mut ids = SeenIds::default();
        ids.extend((0..700).map(key));
        ids.flush_and_merge().unwrap();
        ids.extend((700..900).map(key));
        // Made in memory, saved to files: the run is copied to a file, the recent keys are one
        // (the set keeps them recent).
        let seen: SharedIds = Arc::new(parking_lot::RwLock::new(ids));
        let saved = cut(&seen, &space).unwrap().save(&space).unwrap();
        let listed = saved.listed.clone();
        assert_eq!(listed.iter().map(|run| run.keys.len).collect::<Vec<_>>(), vec![700, 200]);
        assert_eq!((run_lens(&seen.read()), seen.read().recent.len()), (vec![700], 200));
        // As a checkpoint does: what a manifest lists outlives the columns opened from it,
        // pinned before they go.
        space.pin_also(listed.iter().flat_map(|run| [run.keys.file.clone(), run.index.file.clone()]));
        drop(saved);
        let loaded = SeenIds::load(&space, &listed).unwrap();
        assert_eq!(loaded.len(), 900);
        assert!((0..900).all(|i| loaded.contains(&key(i))) && !loaded.contains(&key(900)));

        // A wrong count in an index is refused, naming the file.
        let mut bad = listed[0].clone();
        let mut index: Column<u64> = space.column();
        index.extend_from_slice(&loaded.runs[0].index);
        index.as_mut_slice()[1] += 1;
        bad.index = save_column(&index, &space).unwrap();
        let err = SeenIds::load(&space, &[bad]).unwrap_err().to_string();
        assert!(err.contains(index.file_name().unwrap()) && err.contains("corrupt"), "{err}");

        // Version 1: one sorted column.
        let mut sorted: Vec<u128> = (0..50).map(key).collect();
        sorted.sort_unstable();
        let mut column: Column<u128> = space.column();
        column.extend_from_slice(&sorted);
        let old = save_column(&column, &space).unwrap();
        // A start pins what the manifest lists: converting a file does not remove it.
        space.pin_also([old.file.clone()]);
        let migrated = SeenIds::load_sorted(&space, &old).unwrap();
        assert_eq!(run_lens(&migrated), vec![50]);
        assert!((0..50).all(|i| migrated.contains(&key(i))) && !migrated.contains(&key(50)));
        sorted.swap(0, 1);
        let mut unsorted: Column<u128> = space.column();
        unsorted.extend_from_slice(&sorted);
        let unsorted = save_column(&unsorted, &space).unwrap();
        space.pin_also([unsorted.file.clone()]);
        assert!(SeenIds::load_sorted(&space, &unsorted).unwrap_err().to_string().contains("not sorted"));

        // Version 2: runs of whole keys, each with its index; loaded as runs of top 96 bits.
        let whole = SeenRunRef { keys: old.clone(), index: listed[0].index.clone() };
        let migrated = SeenIds::load(&space, &[vec![whole], listed.clone()].concat()).unwrap();
        assert_eq!(run_lens(&migrated), vec![50, 700, 200]);
        assert!(matches!(migrated.runs[0].keys, RunKeys::Whole(_)) && migrated.runs[0].len() == 50);
        assert!((0..900).all(|i| migrated.contains(&key(i))) && !migrated.contains(&key(900)));
        let unsorted_run = SeenRunRef { keys: unsorted, index: listed[0].index.clone() };
        assert!(SeenIds::load(&space, &[unsorted_run]).unwrap_err().to_string().contains("not sorted"));
    }

    #[test]
    fn a_run_tells_keys_apart_by_their_top_96_bits() {
        let base = key(1);
        let mut ids = SeenIds::default();
        ids.insert(base);
        ids.flush_and_merge().unwrap();
        assert!(ids.contains(&base) && ids.contains(&(base ^ 1)), "the low 32 bits are not kept");
        assert!(!ids.contains(&(base ^ (1 << 32))) && !ids.contains(&(base ^ (1 << 127))));
    }

    #[test]
    fn a_run_of_16_range_bits_or_more_keeps_10_bytes_a_key_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::durable_for_tests(dir.path());
        // Keys spread over the top bits and crowded into a few ranges, to cross range edges.
        let mut sorted: Vec<RunKey> = (0..3000u32)
            .map(|i| run_key(key(u64::from(i))))
            .chain((0..200u32).map(|i| [0x1234_0000 | (i % 3), i.wrapping_mul(2_654_435_761), i]))
            .collect();
        sorted.sort_unstable();
        sorted.dedup();
        let narrow = Run::build_with(Some(&space), sorted.iter().copied(), 17, 4).unwrap();
        assert!(matches!(narrow.keys, RunKeys::Narrow(_)));
        assert_eq!(narrow.keys().collect::<Vec<_>>(), sorted, "the top bits come back from the ranges");
        let listed = narrow.save(&space).unwrap();
        assert_eq!(listed.keys.bytes, 10 * sorted.len() as u64);
        // A whole run that would be narrow today (version 3) becomes narrow as it opens.
        let whole = Run::build_with(Some(&space), sorted.iter().copied(), 12, 4).unwrap();
        assert!(matches!(whole.keys, RunKeys::Whole(_)));
        let mut big: Vec<RunKey> = (0..600_000u64).map(|i| run_key(key(i))).collect();
        big.sort_unstable();
        let big_whole = Run::build_with(Some(&space), big.iter().copied(), 12, 1000).unwrap();
        let lists = [listed, whole.save(&space).unwrap(), big_whole.save(&space).unwrap()];
        space.pin_also(lists.iter().flat_map(|run| [run.keys.file.clone(), run.index.file.clone()]));
        let loaded = SeenIds::load(&space, &lists).unwrap();
        let layouts: Vec<bool> = loaded.runs.iter().map(|run| matches!(run.keys, RunKeys::Narrow(_))).collect();
        assert_eq!(layouts, vec![true, false, true]);
        assert_eq!(loaded.runs[2].range_bits, range_bits_for(600_000));
        for run in &loaded.runs[..2] {
            assert_eq!(run.keys().collect::<Vec<_>>(), sorted);
        }
        assert!((0..600_000).step_by(997).all(|i| loaded.contains(&key(i))));
        assert!(sorted.iter().all(|k| {
            let whole = (u128::from(k[0]) << 96) | (u128::from(k[1]) << 64) | (u128::from(k[2]) << 32);
            loaded.runs[0].contains(whole)
        }));
        assert!(!loaded.contains(&key(600_000)) && !loaded.runs[0].contains(key(4000)));
        // Merged with a whole run, the result is narrow when it is large enough, else whole.
        let merged = Run::merged(
            None,
            &loaded.runs[..2]
                .iter()
                .cloned()
                .chain([Arc::new(Run::of_keys(None, (5000..5100).map(key)).unwrap())])
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(merged.len(), sorted.len() + 100);
        assert!(matches!(merged.keys, RunKeys::Whole(_)), "{} keys have fewer than 16 range bits", merged.len());
        assert!(merged.keys().is_sorted_by(|a, b| a < b));
        // A narrow file with too few range bits for its layout is refused.
        let mut bad = lists[0].clone();
        bad.index = lists[1].index.clone();
        bad.keys.len = lists[1].keys.len;
        bad.keys.bytes = 10 * bad.keys.len;
        assert!(SeenIds::load(&space, &[bad]).is_err());
    }

    proptest! {
        #[test]
        fn membership_matches_a_hash_set(keys in proptest::collection::vec(any::<u64>(), 0..300), cuts in proptest::collection::vec(0usize..300, 0..6)) {
            // Distinct in their top 96 bits, as keys that are hashes are.
            let keys: Vec<u128> = keys.into_iter().map(|k| u128::from(k) << 32 | u128::from(k as u32)).collect();
            let mut ids = SeenIds::default();
            let mut reference = std::collections::HashSet::new();
            for (i, k) in keys.iter().enumerate() {
                if cuts.contains(&i) {
                    ids.flush_and_merge().unwrap();
                }
                prop_assert_eq!(ids.insert(*k), reference.insert(*k));
            }
            ids.flush_and_merge().unwrap();
            for k in &keys {
                prop_assert!(ids.contains(k));
            }
            prop_assert_eq!(ids.len(), reference.len());
        }
    }
}

/// Not a test: the speed of a batch's lookups against single ones, at about the size of the
/// 31 M-event set (BENCHMARKS.md, session 28). Prints; asserts only that both agree.
/// `cargo test --release --lib dedupe_lookups_speed -- --ignored --nocapture`
#[cfg(test)]
mod speed {
    use super::*;

    #[test]
    #[ignore]
    fn dedupe_lookups_speed() {
        let key = |i: u64| crate::core::store::record::event_key("p", &i.to_string());
        let mut ids = SeenIds::default();
        let mut start = 0;
        for n in [16_000_000, 8_000_000, 4_000_000, 1_000_000] {
            ids.runs.push(Arc::new(Run::of_keys(None, (start..start + n).map(key)).unwrap()));
            start += n;
        }
        ids.extend((start..start + 800_000).map(key));
        // New ids, the common case: every run is asked.
        let asked: Vec<u128> = (100_000_000..102_000_000).map(key).collect();
        for round in 1..=3 {
            let timed = std::time::Instant::now();
            let single: Vec<bool> = asked.iter().map(|k| ids.contains(k)).collect();
            let single_took = timed.elapsed();
            let timed = std::time::Instant::now();
            let batched: Vec<bool> = asked.chunks(5000).flat_map(|batch| ids.contains_each(batch)).collect();
            let batched_took = timed.elapsed();
            assert_eq!(single, batched);
            let per_key = |took: std::time::Duration| took.as_nanos() as f64 / asked.len() as f64;
            eprintln!(
                "round {round}: {} lookups, one at a time {:.0} ns each, in batches of 5,000 {:.0} ns each",
                asked.len(),
                per_key(single_took),
                per_key(batched_took)
            );
        }
    }
}
