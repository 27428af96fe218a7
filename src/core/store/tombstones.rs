//! Rows removed by DeleteUser and data retention, until a compaction rewrites the table
//! without them.
//!
//! Removing rows from the columns means copying every column (seconds at tens of millions of
//! rows), and the removal is applied by the writer: every project's acks waited for it. A
//! removed row is marked here instead, at once, and every read of the table leaves it out
//! (`EventTable::is_removed`); the background compaction then writes the table again without
//! the marked rows, which is when their bytes leave the disk.

use serde::{Deserialize, Serialize};

/// One bit per row, set when the row is removed, and how many are set.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tombstones {
    /// Bit `row % 64` of word `row / 64`; rows past the words are not removed.
    words: Vec<u64>,
    count: usize,
}

impl Tombstones {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many rows are removed.
    pub fn count(&self) -> usize {
        self.count
    }

    #[inline]
    pub fn contains(&self, row: usize) -> bool {
        self.count > 0 && self.words.get(row / 64).is_some_and(|word| word >> (row % 64) & 1 == 1)
    }

    /// Marks `row`; false when it was marked already.
    pub fn insert(&mut self, row: usize) -> bool {
        if self.contains(row) {
            return false;
        }
        if self.words.len() <= row / 64 {
            self.words.resize(row / 64 + 1, 0);
        }
        self.words[row / 64] |= 1 << (row % 64);
        self.count += 1;
        true
    }

    /// The marked rows in `range`, ascending.
    pub fn within(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = usize> + '_ {
        let words = range.start / 64..range.end.div_ceil(64).min(self.words.len());
        words
            .flat_map(move |w| {
                let mut word = self.words[w];
                std::iter::from_fn(move || {
                    if word == 0 {
                        return None;
                    }
                    let bit = word.trailing_zeros() as usize;
                    word &= word - 1;
                    Some(w * 64 + bit)
                })
            })
            .filter(move |row| range.contains(row))
    }

    /// Checks the marks against a table of `rows` rows (after loading a checkpoint).
    pub fn check(&self, rows: usize) -> Result<(), String> {
        let counted: usize = self.words.iter().map(|w| w.count_ones() as usize).sum();
        if counted != self.count || self.within(rows..usize::MAX).next().is_some() {
            return Err(format!("the removed rows disagree with the table's {rows} rows"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Marks read back as a set would, in order, whatever rows and ranges.
        #[test]
        fn marks_read_back_as_a_set(rows in proptest::collection::vec(0usize..1000, 0..200), from in 0usize..1000, len in 0usize..1000) {
            let mut marks = Tombstones::default();
            let mut set = std::collections::BTreeSet::new();
            for &row in &rows {
                prop_assert_eq!(marks.insert(row), set.insert(row));
            }
            prop_assert_eq!(marks.count(), set.len());
            for row in 0..1100 {
                prop_assert_eq!(marks.contains(row), set.contains(&row));
            }
            let range = from..from + len;
            let within: Vec<usize> = marks.within(range.clone()).collect();
            let expected: Vec<usize> = set.range(range).copied().collect();
            prop_assert_eq!(within, expected);
            prop_assert!(marks.check(1000).is_ok());
            if let Some(&last) = set.last() {
                prop_assert!(marks.check(last).is_err(), "a mark past the rows is refused");
            }
        }
    }
}
