//! Event times in 6 bytes a row: each block of `BLOCK` rows has a base (its first time less
//! 2^47 µs), and a row stores its time's offset from the base in 48 bits, so every time within
//! 4.4 years of its block's first one fits. A time farther away (a backfill beside live events)
//! is marked and kept whole in a side list of (row, time), looked up by row.
//!
//! Times are read one row at a time (building the person order, merging the rows since, a
//! user's timeline, an experiment's exposures); no query scans this column, so an add and a
//! shift per read cost nothing next to the 2 bytes a row saved.

use std::sync::Arc;

use crate::core::model::Micros;
use crate::core::store::column::{Column, ColumnSpace};

/// Rows per block of one base.
pub const BLOCK: usize = 64;
/// A row's offset from its block's base, least significant part first.
pub type Cell = [u16; 3];
/// The offset that marks a time kept in the side list.
const FAR: u64 = (1 << 48) - 1;
/// A block's base is its first time less this, so that offsets reach as far either way.
const HALF_SPAN: i128 = 1 << 47;

#[derive(Debug, Default)]
pub struct Times {
    pub(in crate::core::store) cells: Column<Cell>,
    /// Per block: the time offsets count from.
    pub(in crate::core::store) bases: Column<i64>,
    /// The rows marked `FAR`, ascending, and their times.
    pub(in crate::core::store) far_rows: Column<u32>,
    pub(in crate::core::store) far_times: Column<Micros>,
}

fn offset_of(cell: Cell) -> u64 {
    u64::from(cell[0]) | (u64::from(cell[1]) << 16) | (u64::from(cell[2]) << 32)
}

fn cell_of(offset: u64) -> Cell {
    [offset as u16, (offset >> 16) as u16, (offset >> 32) as u16]
}

impl Times {
    /// The same times, sharing the files (see `Column::fork`).
    pub fn fork(&self) -> Times {
        Times {
            cells: self.cells.fork(),
            bases: self.bases.fork(),
            far_rows: self.far_rows.fork(),
            far_times: self.far_times.fork(),
        }
    }

    /// Empty, its columns in files of `space` (in memory without one).
    pub fn in_space(space: Option<&Arc<ColumnSpace>>) -> Times {
        Times {
            cells: Column::in_space(space),
            bases: Column::in_space(space),
            far_rows: Column::in_space(space),
            far_times: Column::in_space(space),
        }
    }

    /// Empty, in the same space, for a rewrite.
    pub fn fresh(&self) -> Times {
        Times {
            cells: self.cells.fresh(),
            bases: self.bases.fresh(),
            far_rows: self.far_rows.fresh(),
            far_times: self.far_times.fresh(),
        }
    }

    /// Times as a checkpoint saved them, checked to fit together: a base per block, and the
    /// side list's rows marked far, in order.
    pub fn from_parts(
        cells: Column<Cell>,
        bases: Column<i64>,
        far_rows: Column<u32>,
        far_times: Column<Micros>,
    ) -> Result<Times, String> {
        if bases.len() != cells.len().div_ceil(BLOCK) {
            return Err(format!("{} bases for {} times", bases.len(), cells.len()));
        }
        if far_rows.len() != far_times.len() || !far_rows.is_sorted_by(|a, b| a < b) {
            return Err("the far times' rows are not one per time, in order".into());
        }
        // Only the far rows are checked (a pass over every cell would add to each start); a
        // cell marked far that the list lacks reads as the list's first time, never a panic.
        if !far_rows.iter().all(|&row| cells.get(row as usize).is_some_and(|&cell| offset_of(cell) == FAR)) {
            return Err("the far times are not the rows marked far".into());
        }
        Ok(Times { cells, bases, far_rows, far_times })
    }

    /// The times of a table written before they were packed (manifest version 3 and earlier).
    pub fn from_plain(space: Option<&Arc<ColumnSpace>>, plain: &[Micros]) -> Times {
        let mut times = Times::in_space(space);
        times.cells.reserve(plain.len());
        plain.iter().for_each(|&t| times.push(t));
        times
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn push(&mut self, time: Micros) {
        let row = self.cells.len();
        if row.is_multiple_of(BLOCK) {
            let base = (i128::from(time) - HALF_SPAN).max(i128::from(Micros::MIN));
            self.bases.push(base as i64);
        }
        let offset = i128::from(time) - i128::from(self.bases[row / BLOCK]);
        if (0..FAR as i128).contains(&offset) {
            self.cells.push(cell_of(offset as u64));
        } else {
            self.cells.push(cell_of(FAR));
            self.far_rows.push(u32::try_from(row).expect("rows are u32"));
            self.far_times.push(time);
        }
    }

    /// Row `row`'s block base and offset, or `None` when its time is in the side list.
    fn base_and_offset(&self, row: usize) -> Option<(i64, i64)> {
        let offset = offset_of(self.cells[row]);
        (offset != FAR).then(|| (self.bases[row / BLOCK], offset as i64))
    }

    /// Row `row`'s time.
    #[inline]
    pub fn get(&self, row: usize) -> Micros {
        match self.base_and_offset(row) {
            // Pushed from a time that fits (a corrupt base reads as a wrong time, not a panic).
            Some((base, offset)) => base.wrapping_add(offset),
            None => {
                let at = self.far_rows.binary_search(&(row as u32)).unwrap_or_default();
                self.far_times.get(at).copied().unwrap_or_default()
            }
        }
    }

    /// Every row's time, in row order.
    pub fn iter(&self) -> impl Iterator<Item = Micros> + '_ {
        (0..self.len()).map(|row| self.get(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_near_and_far_from_their_block_read_back() {
        let year = 365 * 86_400 * 1_000_000i64;
        let mut all: Vec<Micros> =
            (0..300).map(|i| 1_767_225_600_000_000 + i * 37_000_123 - (i % 7) * year / 2).collect();
        // Far from their blocks' first times: backfills, the extremes, and a block that starts far.
        all[5] = 0;
        all[70] = Micros::MIN;
        all[71] = Micros::MAX;
        all[128] = -5 * year;
        all[129] = 5 * year;
        let mut times = Times::default();
        all.iter().for_each(|&t| times.push(t));
        assert_eq!(times.iter().collect::<Vec<_>>(), all);
        // Row 128 starts its block five years back: the block's later rows are all far from it.
        let far: Vec<u32> = [5, 70, 71].into_iter().chain(129..192).collect();
        assert_eq!((times.bases.len(), times.far_rows.to_vec()), (5, far));
        let loaded = Times::from_parts(
            times.cells.to_vec().into(),
            times.bases.to_vec().into(),
            times.far_rows.to_vec().into(),
            times.far_times.to_vec().into(),
        )
        .unwrap();
        assert_eq!(loaded.iter().collect::<Vec<_>>(), all);
        assert_eq!(Times::from_plain(None, &all).iter().collect::<Vec<_>>(), all);
    }

    #[test]
    fn saved_times_that_do_not_fit_together_are_refused() {
        let mut times = Times::default();
        [10, 20, i64::MAX, 30].into_iter().for_each(|t| times.push(t));
        let parts = |t: &Times| (t.cells.to_vec(), t.bases.to_vec(), t.far_rows.to_vec(), t.far_times.to_vec());
        let load = |(c, b, r, f): (Vec<Cell>, Vec<i64>, Vec<u32>, Vec<Micros>)| {
            Times::from_parts(c.into(), b.into(), r.into(), f.into())
        };
        assert!(load(parts(&times)).is_ok());
        let (c, _, r, f) = parts(&times);
        assert!(load((c, vec![], r, f)).unwrap_err().contains("0 bases for 4 times"));
        let (c, b, _, f) = parts(&times);
        assert!(load((c, b, vec![1], f)).unwrap_err().contains("not the rows marked far"));
        let (c, b, r, _) = parts(&times);
        assert!(load((c, b, r, vec![])).is_err());
    }
}
