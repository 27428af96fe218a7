//! The set of every event id ever stored (as 128-bit keys, `event_key`), in bounded memory.
//!
//! A hash set of 10 M keys is about 280 MB of anonymous memory, growing for ever. Instead,
//! recent keys sit in a small hash set, and older ones in one sorted column (a mapped file, see
//! `store::column`) with a table of where each range of leading bits starts: keys are hashes,
//! so a range holds a few dozen keys and a lookup reads one or two pages. When the recent set
//! grows past a share of the sorted one, the two merge into a new sorted column; the writer
//! builds it under the read lock (`merged`) and swaps it in under the write lock (`install`),
//! so readers wait only for the swap.

use std::hash::BuildHasherDefault;
use std::sync::Arc;

use hashbrown::HashSet;

use super::writer::IdHasher;
use crate::core::store::column::{Column, ColumnSpace};
use crate::core::store::segment::{ColumnRef, open_column, save_column};
use crate::error::{Error, Result};
use crate::storage::files::io_error;

/// Leading key bits that pick a range of the sorted column.
const RANGE_BITS: u32 = 18;
/// Merge when the recent keys exceed this many and a sixteenth of the sorted ones.
const MIN_MERGE: usize = 1 << 20;

/// A hash set of keys (a batch's or a group's).
pub type KeySet = HashSet<u128, BuildHasherDefault<IdHasher>>;

#[derive(Debug)]
pub struct SeenIds {
    recent: KeySet,
    sorted: Column<u128>,
    /// Range r of leading bits is `sorted[starts[r]..starts[r + 1]]` (`2^RANGE_BITS + 1` entries
    /// once there are sorted keys; empty before).
    starts: Vec<u64>,
    /// The last checkpoint's copy of `starts` (kept so its file stays while listed).
    saved_starts: Option<Column<u64>>,
}

impl Default for SeenIds {
    fn default() -> Self {
        SeenIds::in_space(None)
    }
}

/// The sorted keys and range table of a merge, ready to `install`.
pub struct Merged {
    sorted: Column<u128>,
    starts: Vec<u64>,
    merged: usize,
}

fn range_of(key: u128) -> usize {
    (key >> (128 - RANGE_BITS)) as usize
}

impl SeenIds {
    /// An empty set whose sorted keys live in a file of `space` (or in memory).
    pub fn in_space(space: Option<&Arc<ColumnSpace>>) -> SeenIds {
        SeenIds { recent: KeySet::default(), sorted: Column::in_space(space), starts: Vec::new(), saved_starts: None }
    }

    pub fn len(&self) -> usize {
        self.recent.len() + self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, key: &u128) -> bool {
        if self.recent.contains(key) {
            return true;
        }
        if self.starts.is_empty() {
            return false;
        }
        let r = range_of(*key);
        self.sorted[self.starts[r] as usize..self.starts[r + 1] as usize].binary_search(key).is_ok()
    }

    /// Adds `key`; false when it was already there.
    pub fn insert(&mut self, key: u128) -> bool {
        if self.contains(&key) {
            return false;
        }
        self.recent.insert(key);
        self.merge_if_due();
        true
    }

    /// Adds keys known to be new (the writer's synced group).
    pub fn extend(&mut self, keys: impl IntoIterator<Item = u128>) {
        self.recent.extend(keys);
    }

    /// Whether the recent keys should be merged into the sorted ones now.
    pub fn merge_due(&self) -> bool {
        self.recent.len() >= MIN_MERGE.max(self.sorted.len() / 16)
    }

    fn merge_if_due(&mut self) {
        if self.merge_due() {
            let merged = self.merged();
            self.install(merged);
        }
    }

    /// The sorted column of every key in the set, built without changing it.
    pub fn merged(&self) -> Merged {
        self.merged_into(self.sorted.fresh())
    }

    /// `merged`, into the empty column `sorted`.
    fn merged_into(&self, mut sorted: Column<u128>) -> Merged {
        let mut recent: Vec<u128> = self.recent.iter().copied().collect();
        recent.sort_unstable();
        sorted.reserve(self.sorted.len() + recent.len());
        let (mut old, mut new) = (&self.sorted[..], &recent[..]);
        // Both runs are sorted and disjoint: copy the old run in blocks up to each new key.
        while let Some((&key, rest)) = new.split_first() {
            let at = old.partition_point(|&k| k < key);
            sorted.extend_from_slice(&old[..at]);
            sorted.push(key);
            old = &old[at..];
            new = rest;
        }
        sorted.extend_from_slice(old);
        let mut starts = Vec::with_capacity((1 << RANGE_BITS) + 1);
        let mut at = 0usize;
        for r in 0..=(1usize << RANGE_BITS) {
            while at < sorted.len() && range_of(sorted[at]) < r {
                at += 1;
            }
            starts.push(at as u64);
        }
        Merged { sorted, starts, merged: recent.len() }
    }

    /// Replaces the sorted keys with a merge of this set, made since the last change.
    pub fn install(&mut self, merged: Merged) {
        debug_assert_eq!(merged.merged, self.recent.len(), "the set changed since the merge");
        self.sorted = merged.sorted;
        self.starts = merged.starts;
        self.recent = KeySet::default();
    }
}

impl SeenIds {
    /// Checkpoint: merges every key into the sorted column and writes it and the range table.
    pub fn save(&mut self, space: &Arc<ColumnSpace>) -> Result<(ColumnRef, ColumnRef)> {
        fn column<T: bytemuck::Pod>(space: &Arc<ColumnSpace>) -> Result<Column<T>> {
            space.try_column().map_err(|(path, e)| io_error("cannot create", &path, e))
        }
        // A set made in memory (no space at start) moves to a file now.
        if !self.recent.is_empty() || self.sorted.file_name().is_none() {
            let merged = self.merged_into(column(space)?);
            self.install(merged);
        }
        let mut starts: Column<u64> = column(space)?;
        starts.extend_from_slice(&self.starts);
        let refs = (save_column(&self.sorted, space)?, save_column(&starts, space)?);
        self.saved_starts = Some(starts);
        Ok(refs)
    }

    /// The set a checkpoint saved.
    pub fn load(space: &Arc<ColumnSpace>, sorted: &ColumnRef, starts: &ColumnRef) -> Result<SeenIds> {
        let sorted: Column<u128> = open_column(space, sorted)?;
        let saved: Column<u64> = open_column(space, starts)?;
        let valid = if sorted.is_empty() {
            saved.is_empty()
        } else {
            saved.len() == (1 << RANGE_BITS) + 1
                && saved.windows(2).all(|w| w[0] <= w[1])
                && saved.last() == Some(&(sorted.len() as u64))
        };
        if !valid {
            return Err(Error::Storage(format!(
                "the checkpointed dedupe keys' range table {} is corrupt",
                starts.file
            )));
        }
        Ok(SeenIds { recent: KeySet::default(), starts: saved.to_vec(), sorted, saved_starts: Some(saved) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u64) -> u128 {
        crate::core::store::record::event_key("p", &i.to_string())
    }

    #[test]
    fn keys_stay_members_across_merges() {
        let mut ids = SeenIds::default();
        for i in 0..1000 {
            assert!(ids.insert(key(i)));
        }
        ids.install(ids.merged());
        assert_eq!(ids.recent.len(), 0);
        ids.extend((1000..1500).map(key));
        for i in 0..1500 {
            assert!(ids.contains(&key(i)), "{i}");
            assert!(!ids.insert(key(i)));
        }
        assert!(!ids.contains(&key(1500)));
        ids.install(ids.merged());
        assert_eq!(ids.len(), 1500);
        assert!(ids.sorted.is_sorted());
        assert!(ids.contains(&key(1499)) && !ids.contains(&key(1501)));
    }

    proptest! {
        #[test]
        fn membership_matches_a_hash_set(keys in proptest::collection::vec(any::<u128>(), 0..300), cut in 0usize..300) {
            let mut ids = SeenIds::default();
            let mut reference = std::collections::HashSet::new();
            for (i, k) in keys.iter().enumerate() {
                if i == cut {
                    ids.install(ids.merged());
                }
                prop_assert_eq!(ids.insert(*k), reference.insert(*k));
            }
            ids.install(ids.merged());
            for k in &keys {
                prop_assert!(ids.contains(k));
            }
            prop_assert_eq!(ids.len(), reference.len());
        }
    }
}
