//! Events ordered by person, then time: the layout funnels, retention and cohort tables scan.
//!
//! Rows arrive in arrival order, so one person's events are scattered and rarely in time
//! order. `PersonOrder` copies (row, time, name) into contiguous arrays sorted by canonical
//! person then time, built once and reused by later queries. Rows appended since the build
//! (the tail) are merged in per person at query time; when the tail grows past a share of
//! the covered rows, or rows are removed (DeleteUser, retention) or renumbered (compaction), the
//! next query rebuilds; a removed row is placed in no order. The tail's rows per person are
//! kept with the order, and the next query adds only the rows appended since.
//!
//! Aliases do not rebuild it either: an anonymous person whose owner changed since the build
//! has its rows moved at query time. The blocks of the people it left and joined are read
//! again row by row and merged like the tail, until owner changes pass the tail's share.
//!
//! The order also indexes its positions by event name, so a scan that reads only some events
//! (a metric over `purchase`, a funnel from `signup` to `purchase`) visits the people who did
//! them, with only those events, instead of walking every row (`for_each_named`). The index
//! belongs to the order (rebuilt with it, the tail merged in the same way), but a name's part
//! is made when a scan first asks for that name, with the other missing names the scan asks
//! for, in one pass: after a start, the first funnel waits for its four names' copies, not for
//! every name's (for the generator's events, a fifth of the rows instead of all of them).
//!
//! While the order is being built (after a start, or a rebuild), a named scan does not wait
//! for it: `build_named` makes an order of only its names' rows, from the table, which serves
//! scans of those names the same way (`PersonOrderCache::for_names`).

use std::sync::Arc;

use hashbrown::HashMap;

use crate::core::cancel;
use crate::core::model::Micros;
use crate::core::store::column::Column;
use crate::core::store::table::EventTable;

/// Rebuild when the unsorted tail exceeds this many rows and an eighth of the covered rows.
const MIN_REBUILD_TAIL: usize = 50_000;

#[derive(Debug, Default)]
pub struct PersonOrder {
    /// Rows `0..covered` are in the arrays below.
    covered: usize,
    /// The table's layout version when built (removals and compaction change it).
    layout: u64,
    /// Per event name id known at the build, whether its rows are here: `None` for all names,
    /// else an order for some names' scans only (`build_named`).
    only: Option<Box<[bool]>>,
    /// Each person's owner (`EventTable::canonical`) when built, and the table's count of
    /// owner changes then: people whose owner changed since are moved at query time.
    canonical: Vec<u32>,
    owner_changes: u64,
    /// Canonical people with rows, and where each one's rows start; `starts` has one more
    /// entry than `people`.
    people: Column<u32>,
    starts: Column<u32>,
    rows: Column<u32>,
    times: Column<Micros>,
    names: Column<u32>,
    /// Per event name id known at build time: its rows, in the order above, made on first
    /// use (`name_indexes`); `indexing` lets one scan at a time make the missing ones.
    by_name: Box<[std::sync::OnceLock<NameIndex>]>,
    indexing: parking_lot::Mutex<()>,
    /// The threads the order was built on, and its name indexes are made on.
    threads: usize,
    /// Per (event name, property key): the property's numeric value for each of the name's
    /// indexed rows (`filter::row_number`), made on first use.
    numbers: parking_lot::Mutex<HashMap<(u32, u32), Numbers>>,
    /// Likewise a string property's id per indexed row (`NONE`: missing or not a string).
    strings: parking_lot::Mutex<HashMap<(u32, u32), Strings>>,
    /// The rows past the order as the last query found them, extended by the next query when
    /// only rows were appended since (`tail`), instead of made again from the first one.
    tail: parking_lot::Mutex<Option<Arc<Tail>>>,
}

/// A numeric property's value per indexed row of one name (see `PersonOrder::numbers`).
pub type Numbers = Arc<Vec<Option<f64>>>;
/// A string property's interned id per indexed row of one name (see `PersonOrder::strings`).
pub type Strings = Arc<Vec<u32>>;

/// One event name's rows in person order (then time): a copy of the order's columns for these
/// rows only, so a scan of the name reads contiguous memory. Its people come in groups:
/// `people[g]` (an index into the order's people) owns `rows[starts[g]..starts[g + 1]]`.
#[derive(Debug, Default)]
struct NameIndex {
    people: Column<u32>,
    starts: Column<u32>,
    rows: Column<u32>,
    times: Column<Micros>,
    /// The most rows in one group.
    longest: usize,
}

impl NameIndex {
    fn span(&self, group: usize) -> std::ops::Range<usize> {
        self.starts[group] as usize..self.starts[group + 1] as usize
    }
}

/// Which rows a scan reads: all of them, or only the rows of some event names (name ids;
/// `NONE` or unknown ids select nothing).
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    All,
    Named(&'a [u32]),
}

/// One person's events in time order (ties by arrival): parallel slices.
#[derive(Clone, Copy)]
pub struct PersonEvents<'a> {
    pub rows: &'a [u32],
    pub times: &'a [Micros],
    pub names: &'a [u32],
    /// Set when these are rows `at..at + len` of one name's index (a named scan of one name):
    /// `PersonOrder::numbers` of that name then has their values from `at` on.
    pub indexed_at: Option<usize>,
    /// When not empty (several names merged from the index): each event's position in its
    /// own name's index, for `PersonOrder::numbers` and `PersonOrder::strings` of that name.
    pub positions: &'a [u32],
}

impl PersonEvents<'_> {
    /// Event `i`'s position in its name's index, when known.
    pub fn position(&self, i: usize) -> Option<usize> {
        match self.indexed_at {
            Some(at) => Some(at + i),
            None => self.positions.get(i).map(|&p| p as usize),
        }
    }
}

impl PersonEvents<'_> {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The table's state an order is built at: the rows it covers and each person's owner then
/// (with the table's count of owner changes), in the table's current layout.
struct Snapshot<'a> {
    covered: usize,
    canonical: &'a [u32],
    owner_changes: u64,
}

impl Snapshot<'_> {
    /// The table as it is.
    fn now(table: &EventTable) -> Snapshot<'_> {
        Snapshot { covered: table.len(), canonical: &table.canonical, owner_changes: table.owner_changes() }
    }
}

impl PersonOrder {
    pub fn build(table: &EventTable) -> PersonOrder {
        PersonOrder::build_with(table, query_threads(table))
    }

    /// `build` on `threads` threads.
    fn build_with(table: &EventTable, threads: usize) -> PersonOrder {
        PersonOrder::build_of(table, threads, Snapshot::now(table), None)
    }

    /// An order of only the rows of event names `names` (ids; unknown ones and `NONE` hold no
    /// rows), on `threads` threads: it serves named scans of those names (`holds`) as the whole
    /// order does, for less work. Built at `like`'s state when given (with `like`'s names too),
    /// so a name's positions in both are the same: `numbers` of one serve scans of the other.
    pub fn build_named(table: &EventTable, threads: usize, names: &[u32], like: Option<&PersonOrder>) -> PersonOrder {
        let known = table.names().len();
        let mut keep = vec![false; known];
        for &name in names.iter().filter(|&&name| (name as usize) < known) {
            keep[name as usize] = true;
        }
        let snapshot = match like {
            Some(like) => {
                // Names new since `like`'s build have no covered rows: `like` holds them too.
                let known_then = like.only.as_ref().map_or(known, |only| only.len());
                for (name, keep) in keep.iter_mut().enumerate() {
                    *keep |= name >= known_then || like.only.as_ref().is_none_or(|only| only[name]);
                }
                Snapshot { covered: like.covered, canonical: &like.canonical, owner_changes: like.owner_changes }
            }
            None => Snapshot::now(table),
        };
        PersonOrder::build_of(table, threads, snapshot, Some(keep))
    }

    /// Whether this order holds every name's rows (not built by `build_named`).
    pub fn is_whole(&self) -> bool {
        self.only.is_none()
    }

    /// Whether named scans of `names` may read this order: it holds every row of theirs it
    /// covers (always, unless built by `build_named`).
    pub fn holds(&self, names: &[u32]) -> bool {
        let Some(only) = &self.only else { return true };
        // A name past those known at the build has no covered rows: its rows are all in the tail.
        names.iter().all(|&name| only.get(name as usize).is_none_or(|&held| held))
    }

    /// The order of rows `0..at.covered` of `table`, those of the names `keep` marks (by id)
    /// or all of them, by each row's owner in `at`.
    fn build_of(table: &EventTable, threads: usize, at: Snapshot<'_>, keep: Option<Vec<bool>>) -> PersonOrder {
        let derived = table.space().map(|space| space.derived());
        let space = derived.as_ref();
        let n = at.covered;
        let canonical = at.canonical;
        let threads = threads.max(1);
        // Rows of names not kept get no owner, which no range of people holds.
        const SKIPPED: u32 = u32::MAX;
        // Each row's canonical person (the one random lookup per row), with the rows per
        // person, in parallel over chunks of rows. (Each thread counts into an array over all
        // people: 4 bytes per person per thread, at most 8 threads, freed right after.)
        let started = std::time::Instant::now();
        let mut owner: Column<u32> = Column::in_space(space);
        owner.resize_zeroed(n);
        let chunk = n.div_ceil(threads).max(1);
        let keep = keep.as_deref();
        let counts = std::thread::scope(|scope| {
            let parts: Vec<_> = owner
                .as_mut_slice()
                .chunks_mut(chunk)
                .zip(table.person[..n].chunks(chunk))
                .zip(table.name[..n].chunks(chunk))
                .enumerate()
                .map(|(k, ((owners, persons), names))| {
                    scope.spawn(move || {
                        let mut counts = vec![0u32; canonical.len()];
                        match keep {
                            None => {
                                for (owner, &person) in owners.iter_mut().zip(persons) {
                                    *owner = canonical[person as usize];
                                    counts[*owner as usize] += 1;
                                }
                            }
                            Some(keep) => {
                                for ((owner, &person), &name) in owners.iter_mut().zip(persons).zip(names) {
                                    *owner = if keep[name as usize] { canonical[person as usize] } else { SKIPPED };
                                    if *owner != SKIPPED {
                                        counts[*owner as usize] += 1;
                                    }
                                }
                            }
                        }
                        // Removed rows (DeleteUser, retention) get none either.
                        let base = k * chunk;
                        for row in table.removed_within(base..base + owners.len()) {
                            let owner = &mut owners[row - base];
                            if *owner != SKIPPED {
                                counts[*owner as usize] -= 1;
                                *owner = SKIPPED;
                            }
                        }
                        counts
                    })
                })
                .collect();
            let mut total = vec![0u32; canonical.len()];
            for part in parts {
                let counts = part.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
                total.iter_mut().zip(counts).for_each(|(t, c)| *t += c);
            }
            total
        });
        let owners_done = started.elapsed();
        // People ascending, each one's rows starting where the previous one's end.
        let mut people: Column<u32> = Column::in_space(space);
        let mut starts: Column<u32> = Column::in_space(space);
        starts.push(0);
        let mut next = Vec::with_capacity(counts.len());
        let mut end = 0u32;
        for (person, &count) in counts.iter().enumerate() {
            next.push(end);
            if count > 0 {
                end += count;
                people.push(person as u32);
                starts.push(end);
            }
        }
        drop(counts);
        // Rows, times and names go to their person's slots (arrival order within a person),
        // read in row order: every read is sequential. Each thread takes a range of people
        // with about as many rows as the others, and so a range of slots of its own; each
        // reads the whole owner column (sequentially) and skips the rows of other ranges.
        let mut rows: Column<u32> = Column::in_space(space);
        let mut times: Column<Micros> = Column::in_space(space);
        let mut names: Column<u32> = Column::in_space(space);
        let placed_rows = end as usize;
        rows.resize_zeroed(placed_rows);
        times.resize_zeroed(placed_rows);
        names.resize_zeroed(placed_rows);
        // Cut the canonical people where the slots reach each thread's share of the rows.
        let cuts: Vec<usize> = balanced_cuts(&starts, threads)
            .iter()
            .enumerate()
            .map(|(k, &i)| if k == 0 { 0 } else { people.get(i).map_or(next.len(), |&p| p as usize) })
            .collect();
        let bounds: Vec<usize> = cuts.iter().map(|&c| next.get(c).map_or(placed_rows, |&s| s as usize)).collect();
        std::thread::scope(|scope| {
            let (mut rows, mut times, mut names) = (rows.as_mut_slice(), times.as_mut_slice(), names.as_mut_slice());
            let mut next = &mut next[..];
            let owner = owner.as_slice();
            for k in 0..threads {
                let (first, last) = (cuts[k], cuts[k + 1]);
                let (base, upto) = (bounds[k], bounds[k + 1]);
                let own_next;
                (own_next, next) = std::mem::take(&mut next).split_at_mut(last - first);
                let own_rows;
                (own_rows, rows) = std::mem::take(&mut rows).split_at_mut(upto - base);
                let own_times;
                (own_times, times) = std::mem::take(&mut times).split_at_mut(upto - base);
                let own_names;
                (own_names, names) = std::mem::take(&mut names).split_at_mut(upto - base);
                scope.spawn(move || {
                    for (row, &person) in owner.iter().enumerate() {
                        let person = person as usize;
                        if person < first || person >= last {
                            continue;
                        }
                        let slot = &mut own_next[person - first];
                        let at = *slot as usize - base;
                        *slot += 1;
                        own_rows[at] = row as u32;
                        own_times[at] = table.time_of(row);
                        own_names[at] = table.name[row];
                    }
                });
            }
        });
        drop(owner);
        drop(next);
        let placed = started.elapsed();
        // Each person's events by (time, row): most are in order already.
        let spans: Vec<std::ops::Range<usize>> =
            starts.windows(2).map(|w| w[0] as usize..w[1] as usize).filter(|span| span.len() > 1).collect();
        let sort_part = |rows: &mut [u32],
                         times: &mut [Micros],
                         names: &mut [u32],
                         spans: &[std::ops::Range<usize>],
                         base: usize| {
            let mut events = Vec::new();
            for span in spans {
                let span = span.start - base..span.end - base;
                let (r, t) = (&rows[span.clone()], &times[span.clone()]);
                if (1..r.len()).all(|i| (t[i - 1], r[i - 1]) <= (t[i], r[i])) {
                    continue;
                }
                events.clear();
                events.extend(span.clone().map(|i| (times[i], rows[i], names[i])));
                events.sort_unstable_by_key(|&(time, row, _)| (time, row));
                for (i, (time, row, name)) in span.zip(events.iter().copied()) {
                    (times[i], rows[i], names[i]) = (time, row, name);
                }
            }
        };
        let split = spans.partition_point(|span| span.start < placed_rows / 2);
        if threads > 1 && split > 0 && split < spans.len() {
            let at = spans[split].start;
            let (rows_a, rows_b) = rows.as_mut_slice().split_at_mut(at);
            let (times_a, times_b) = times.as_mut_slice().split_at_mut(at);
            let (names_a, names_b) = names.as_mut_slice().split_at_mut(at);
            let (spans_a, spans_b) = spans.split_at(split);
            std::thread::scope(|scope| {
                scope.spawn(|| sort_part(rows_a, times_a, names_a, spans_a, 0));
                sort_part(rows_b, times_b, names_b, spans_b, at);
            });
        } else {
            sort_part(rows.as_mut_slice(), times.as_mut_slice(), names.as_mut_slice(), &spans, 0);
        }
        let sorted = started.elapsed();
        let order = PersonOrder {
            covered: n,
            layout: table.layout_version(),
            canonical: canonical.to_vec(),
            owner_changes: at.owner_changes,
            only: keep.map(Into::into),
            people,
            starts,
            rows,
            times,
            names,
            by_name: (0..table.names().len()).map(|_| std::sync::OnceLock::new()).collect(),
            indexing: Default::default(),
            threads,
            numbers: Default::default(),
            strings: Default::default(),
            tail: Default::default(),
        };
        tracing::debug!(
            owners_ms = owners_done.as_millis() as u64,
            placed_ms = (placed - owners_done).as_millis() as u64,
            sorted_ms = (sorted - placed).as_millis() as u64,
            "events by person: phases"
        );
        order
    }

    /// The name indexes of `names` (ids past those known at build time, and `NONE`, give
    /// `None`: their rows are all in the tail), making the missing ones first, in one pass.
    fn name_indexes(&self, table: &EventTable, names: &[u32]) -> Vec<Option<&NameIndex>> {
        let known = |name: u32| self.by_name.get(name as usize);
        if names.iter().filter_map(|&name| known(name)).any(|index| index.get().is_none()) {
            let _indexing = self.indexing.lock();
            let mut wanted = vec![false; self.by_name.len()];
            for &name in names {
                if known(name).is_some_and(|index| index.get().is_none()) {
                    wanted[name as usize] = true;
                }
            }
            if wanted.contains(&true) {
                let started = std::time::Instant::now();
                let made = self.index_names(table, self.threads, &wanted);
                tracing::debug!(
                    names = made.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "indexed events by person by name"
                );
                for (name, index) in made {
                    // Only this thread makes indexes (under `indexing`), and only missing ones.
                    let _ = self.by_name[name as usize].set(index);
                }
            }
        }
        names.iter().map(|&name| known(name).and_then(|index| index.get())).collect()
    }

    /// The index of one name (see `name_indexes`).
    fn name_index(&self, table: &EventTable, name: u32) -> Option<&NameIndex> {
        self.name_indexes(table, &[name])[0]
    }

    /// The `wanted` names' indexes from the sorted columns, on `threads` threads: each takes a
    /// range of people with about as many positions as the others, counts its rows and groups
    /// per name, and then writes them where the counts before it end.
    fn index_names(&self, table: &EventTable, threads: usize, wanted: &[bool]) -> Vec<(u32, NameIndex)> {
        let derived = table.space().map(|space| space.derived());
        let space = derived.as_ref();
        let names = wanted.len();
        let cuts = balanced_cuts(&self.starts, threads.clamp(1, self.people.len().max(1)));
        let order = self;
        // Per range, per name: (rows, groups, longest group).
        let counts: Vec<Vec<(usize, usize, usize)>> = std::thread::scope(|scope| {
            let parts: Vec<_> = cuts
                .windows(2)
                .map(|range| {
                    let (first, last) = (range[0], range[1]);
                    scope.spawn(move || {
                        let mut counts = vec![(0usize, 0usize, 0usize); names];
                        let mut run = vec![0usize; names];
                        for person in first..last {
                            let span = order.starts[person] as usize..order.starts[person + 1] as usize;
                            for &name in &order.names[span.clone()] {
                                run[name as usize] += 1;
                            }
                            for &name in &order.names[span] {
                                let n = std::mem::take(&mut run[name as usize]);
                                if n > 0 {
                                    let count = &mut counts[name as usize];
                                    *count = (count.0 + n, count.1 + 1, count.2.max(n));
                                }
                            }
                        }
                        counts
                    })
                })
                .collect();
            parts.into_iter().map(|part| part.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        });
        let mut by_name: Vec<Option<NameIndex>> = (0..names)
            .map(|name| {
                if !wanted[name] {
                    return None;
                }
                let (rows, groups) = counts.iter().fold((0, 0), |(r, g), part| (r + part[name].0, g + part[name].1));
                let mut index = NameIndex {
                    people: Column::in_space(space),
                    starts: Column::in_space(space),
                    rows: Column::in_space(space),
                    times: Column::in_space(space),
                    longest: counts.iter().map(|part| part[name].2).max().unwrap_or(0),
                };
                index.people.resize_zeroed(groups);
                index.starts.resize_zeroed(groups + 1);
                index.rows.resize_zeroed(rows);
                index.times.resize_zeroed(rows);
                if let Some(end) = index.starts.last_mut() {
                    *end = rows as u32;
                }
                Some(index)
            })
            .collect();
        // Each range's share of every wanted name's columns, cut where the ranges before it end.
        type Share<'a> = (&'a mut [u32], &'a mut [u32], &'a mut [u32], &'a mut [Micros], u32);
        let mut shares: Vec<Vec<Option<Share<'_>>>> = (0..cuts.len() - 1).map(|_| Vec::with_capacity(names)).collect();
        for (name, index) in by_name.iter_mut().enumerate() {
            let Some(index) = index else {
                shares.iter_mut().for_each(|share| share.push(None));
                continue;
            };
            let (mut people, mut starts) = (index.people.as_mut_slice(), index.starts.as_mut_slice());
            let (mut rows, mut times) = (index.rows.as_mut_slice(), index.times.as_mut_slice());
            let mut row_base = 0u32;
            for (part, share) in counts.iter().zip(&mut shares) {
                let (n, groups, _) = part[name];
                let own_people;
                (own_people, people) = std::mem::take(&mut people).split_at_mut(groups);
                let own_starts;
                (own_starts, starts) = std::mem::take(&mut starts).split_at_mut(groups);
                let own_rows;
                (own_rows, rows) = std::mem::take(&mut rows).split_at_mut(n);
                let own_times;
                (own_times, times) = std::mem::take(&mut times).split_at_mut(n);
                share.push(Some((own_people, own_starts, own_rows, own_times, row_base)));
                row_base += n as u32;
            }
        }
        std::thread::scope(|scope| {
            for (range, mut share) in cuts.windows(2).zip(shares) {
                let (first, last) = (range[0], range[1]);
                scope.spawn(move || {
                    // Per name: groups and rows written so far.
                    let mut at = vec![(0usize, 0usize); names];
                    for person in first..last {
                        for position in order.starts[person] as usize..order.starts[person + 1] as usize {
                            let name = order.names[position] as usize;
                            let Some((people, starts, rows, times, row_base)) = &mut share[name] else {
                                continue;
                            };
                            let (group, row) = &mut at[name];
                            if *group == 0 || people[*group - 1] != person as u32 {
                                people[*group] = person as u32;
                                starts[*group] = *row_base + *row as u32;
                                *group += 1;
                            }
                            rows[*row] = order.rows[position];
                            times[*row] = order.times[position];
                            *row += 1;
                        }
                    }
                });
            }
        });
        by_name.into_iter().enumerate().filter_map(|(name, index)| Some((name as u32, index?))).collect()
    }

    /// Property `key`'s numeric value (`filter::row_number`) for each indexed row of event
    /// name `name`, in index order (see `PersonEvents::indexed_at`): read from the property
    /// arena once, then kept with the order, so sums over a name read one contiguous column.
    pub fn numbers(&self, table: &EventTable, name: u32, key: u32) -> Numbers {
        if let Some(column) = self.numbers.lock().get(&(name, key)) {
            return column.clone();
        }
        let rows = self.name_index(table, name).map_or(&[][..], |index| &index.rows[..]);
        let column = Arc::new(
            rows.iter().map(|&row| crate::core::filter::row_number(table.row_props(row as usize), key)).collect(),
        );
        self.numbers.lock().insert((name, key), Arc::clone(&column));
        column
    }

    /// Property `key`'s string id for each indexed row of event name `name` (`NONE` when the
    /// row lacks it or holds another type), like `numbers`.
    pub fn strings(&self, table: &EventTable, name: u32, key: u32) -> Strings {
        if let Some(column) = self.strings.lock().get(&(name, key)) {
            return column.clone();
        }
        let rows = self.name_index(table, name).map_or(&[][..], |index| &index.rows[..]);
        let column = Arc::new(rows.iter().map(|&row| string_of(table, row as usize, key)).collect());
        self.strings.lock().insert((name, key), Arc::clone(&column));
        column
    }

    /// The index of `person`'s block of covered rows, if they have one (`people` is ascending:
    /// built in person id order).
    fn block_of(&self, person: u32) -> Option<usize> {
        self.people.binary_search(&person).ok()
    }

    /// Whether this order can serve `table` (possibly with a tail) without a rebuild.
    pub fn serves(&self, table: &EventTable) -> bool {
        let tail = table.len().saturating_sub(self.covered);
        // Each owner change since the build makes queries read up to two people's blocks
        // again: past the tail's share, rebuild.
        let moved = usize::try_from(table.owner_changes() - self.owner_changes).unwrap_or(usize::MAX);
        self.layout == table.layout_version()
            && table.owners_changed_since(self.owner_changes).is_some()
            && self.covered <= table.len()
            && (tail <= MIN_REBUILD_TAIL || tail <= self.covered / 8)
            && (moved <= MIN_REBUILD_TAIL || moved <= self.people.len() / 8)
    }

    /// Visits every canonical person with rows (`Rows::All`), with their events in time order;
    /// with `Rows::Named`, in the same order, each person with at least one event of those
    /// names, with only those events.
    pub fn for_each_named(&self, table: &EventTable, rows: Rows<'_>, mut visit: impl FnMut(u32, PersonEvents<'_>)) {
        let tail = self.tail(table);
        self.visit_rows(table, &tail, rows, 0..self.people.len(), &tail.new_people, &mut visit);
    }

    /// Like `for_each_named`, split into contiguous parts of people run on up to `threads`
    /// threads (see `query_threads`): each part folds into its own state from `init`; the
    /// states come back in part order.
    pub fn fold_parts_named<S: Send>(
        &self,
        table: &EventTable,
        threads: usize,
        rows: Rows<'_>,
        init: impl Fn() -> S + Sync,
        visit: impl Fn(&mut S, u32, PersonEvents<'_>) + Sync,
    ) -> Vec<S> {
        let tail = self.tail(table);
        let parts = threads.clamp(1, self.people.len().max(1));
        let bounds: Vec<usize> = (0..=parts).map(|k| k * self.people.len() / parts).collect();
        crate::core::store::source::run_parts(parts, |k| {
            let mut state = init();
            let extra: &[u32] = if k + 1 == parts { &tail.new_people } else { &[] };
            self.visit_rows(table, &tail, rows, bounds[k]..bounds[k + 1], extra, &mut |person, events| {
                visit(&mut state, person, events)
            });
            state
        })
    }

    /// The rows past the order in `table`: the kept tail when the table is as it found it,
    /// extended when rows were only appended since, else made again.
    ///
    /// Queries read the table under its project's read lock, so those running together see
    /// the same rows and share one tail; the table grows only once they are done, and the
    /// next query then extends the kept tail in place (it holds the only reference).
    fn tail(&self, table: &EventTable) -> Arc<Tail> {
        let mut kept = self.tail.lock();
        let reusable =
            kept.take().filter(|tail| tail.owner_changes == table.owner_changes() && tail.upto <= table.len());
        let tail = match reusable {
            Some(tail) if tail.upto == table.len() => tail,
            Some(mut tail) => {
                Arc::make_mut(&mut tail).extend(self, table);
                tail
            }
            None => Arc::new(Tail::of(self, table)),
        };
        *kept = Some(Arc::clone(&tail));
        tail
    }

    fn visit_rows(
        &self,
        table: &EventTable,
        tail: &Tail,
        rows: Rows<'_>,
        people: std::ops::Range<usize>,
        new_people: &[u32],
        visit: &mut dyn FnMut(u32, PersonEvents<'_>),
    ) {
        debug_assert!(
            match rows {
                Rows::All => self.only.is_none(),
                Rows::Named(names) => self.holds(names),
            },
            "an order of some names scanned for others"
        );
        match rows {
            Rows::All => self.visit_part(table, tail, people, new_people, visit),
            Rows::Named(names) => self.visit_named(table, tail, names, people, new_people, visit),
        }
    }

    /// `visit_part` through the name index: merges the names' people groups (each in person
    /// order), and merges people with tail rows from their whole events, filtered.
    fn visit_named(
        &self,
        table: &EventTable,
        tail: &Tail,
        names: &[u32],
        people: std::ops::Range<usize>,
        new_people: &[u32],
        visit: &mut dyn FnMut(u32, PersonEvents<'_>),
    ) {
        let mut names = names.to_vec();
        names.sort_unstable();
        names.dedup();
        let mut gathered = Merged::default();
        // (name, its index, its next group, the end of its groups in the part)
        let indexes = self.name_indexes(table, &names);
        let mut lists: Vec<(u32, &NameIndex, usize, usize)> = names
            .iter()
            .zip(indexes)
            .filter_map(|(&name, index)| {
                let index = index?;
                let first = index.people.partition_point(|&p| (p as usize) < people.start);
                let end = index.people.partition_point(|&p| (p as usize) < people.end);
                (first < end).then_some((name, index, first, end))
            })
            .collect();
        // A name column for a group of one name.
        let same_name: Vec<Vec<u32>> = lists.iter().map(|l| vec![l.0; l.1.longest]).collect();
        let mut parts: Vec<MergePart<'_>> = Vec::new();
        let tail_people = &tail.existing
            [tail.existing.partition_point(|&p| p < people.start)..tail.existing.partition_point(|&p| p < people.end)];
        let (mut next_tail, mut visited) = (0usize, 0usize);
        loop {
            if visited.is_multiple_of(cancel::CHECK_EVERY) && cancel::stopped() {
                return;
            }
            visited += 1;
            let indexed = lists.iter().filter(|l| l.2 < l.3).map(|l| l.1.people[l.2] as usize).min();
            let tailed = tail_people.get(next_tail).copied();
            let i = match (indexed, tailed) {
                (None, None) => break,
                (Some(i), Some(t)) => i.min(t),
                (Some(i), None) => i,
                (None, Some(t)) => t,
            };
            let person = self.people[i];
            let mut holding = lists.iter_mut().enumerate().filter(|(_, l)| l.2 < l.3 && l.1.people[l.2] as usize == i);
            if tailed == Some(i) {
                next_tail += 1;
                holding.for_each(|(_, l)| l.2 += 1);
                let events = gathered.fill_named(table, self.block(tail, i), &tail.rows[&person], &names);
                if !events.is_empty() {
                    visit(person, events);
                }
                continue;
            }
            let (k, first) = holding.next().expect("the person holds a group of some name");
            let Some((_, second)) = holding.next() else {
                // One name: its group as it is.
                let span = first.1.span(first.2);
                first.2 += 1;
                let index = first.1;
                let names = &same_name[k][..span.len()];
                let indexed_at = Some(span.start);
                visit(
                    person,
                    PersonEvents {
                        rows: &index.rows[span.clone()],
                        times: &index.times[span],
                        names,
                        indexed_at,
                        positions: &[],
                    },
                );
                continue;
            };
            // Several names: their groups merged by (time, row), the order's order.
            parts.clear();
            for (name, index, group, _) in [first, second].into_iter().chain(holding.map(|(_, l)| l)) {
                let span = index.span(*group);
                *group += 1;
                parts.push((*name, span.start as u32, &index.rows[span.clone()], &index.times[span]));
            }
            gathered.merge(&mut parts);
            visit(person, gathered.events());
        }
        for (i, person) in new_people.iter().enumerate() {
            if i.is_multiple_of(cancel::CHECK_EVERY) && cancel::stopped() {
                return;
            }
            let events = gathered.fill_named(table, &[], &tail.rows[person], &names);
            if !events.is_empty() {
                visit(*person, events);
            }
        }
    }

    fn visit_part(
        &self,
        table: &EventTable,
        tail: &Tail,
        people: std::ops::Range<usize>,
        new_people: &[u32],
        visit: &mut dyn FnMut(u32, PersonEvents<'_>),
    ) {
        let mut merged = Merged::default();
        let first = people.start;
        for i in people {
            // A cancelled query stops here; its caller is gone and discards the result.
            if (i - first).is_multiple_of(cancel::CHECK_EVERY) && cancel::stopped() {
                return;
            }
            let person = self.people[i];
            let span = self.starts[i] as usize..self.starts[i + 1] as usize;
            let events = PersonEvents {
                rows: &self.rows[span.clone()],
                times: &self.times[span.clone()],
                names: &self.names[span],
                indexed_at: None,
                positions: &[],
            };
            match tail.rows.get(&person) {
                None => visit(person, events),
                Some(extra) => {
                    let events = merged.fill(table, self.block(tail, i), extra);
                    if !events.is_empty() {
                        visit(person, events);
                    }
                }
            }
        }
        for (i, person) in new_people.iter().enumerate() {
            if i.is_multiple_of(cancel::CHECK_EVERY) && cancel::stopped() {
                return;
            }
            visit(*person, merged.fill(table, &[], &tail.rows[person]));
        }
    }

    /// The rows of the order's person `i` to merge with their tail rows: none when the tail
    /// holds all of them (a person an owner change touched).
    fn block(&self, tail: &Tail, i: usize) -> &[u32] {
        if tail.replaced.binary_search(&i).is_ok() {
            return &[];
        }
        &self.rows[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

/// Property `key`'s string id in `row`, `NONE` when missing or not a string.
fn string_of(table: &EventTable, row: usize, key: u32) -> u32 {
    match table.row_props(row).value_of(key) {
        Some(crate::core::store::table::Cell::Str(id)) => id,
        _ => crate::core::store::table::NONE,
    }
}

/// Below this many rows a query is not worth splitting across threads.
const MIN_PARALLEL_ROWS: usize = 200_000;

/// How many threads a scan of `table` should use: one per core for large tables.
/// Where to cut the people whose rows start at `starts` (one entry more than people, the last
/// the row count) into `threads` ranges of about as many rows each: people indexes, ascending,
/// from 0 to the number of people.
fn balanced_cuts(starts: &[u32], threads: usize) -> Vec<usize> {
    let (people, rows) = (starts.len() - 1, starts.last().map_or(0, |&n| n as usize));
    let mut cuts = vec![0];
    for k in 1..threads {
        cuts.push(starts.partition_point(|&s| (s as usize) < rows * k / threads).min(people));
    }
    cuts.push(people);
    cuts
}

pub fn query_threads(table: &EventTable) -> usize {
    if table.len() < MIN_PARALLEL_ROWS {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Rows appended since an order was built, per canonical person, and the rows of people
/// whose owners changed since.
#[derive(Debug, Default, Clone)]
struct Tail {
    rows: HashMap<u32, Vec<u32>>,
    /// People with tail rows only, ascending.
    new_people: Vec<u32>,
    /// Indexes (into the order's people) of the people with both covered and tail rows,
    /// ascending.
    existing: Vec<usize>,
    /// Indexes of the order's people whose block an owner change touched (it lost or gained
    /// an anonymous person), ascending: their rows, all of them, are in `rows`.
    replaced: Vec<usize>,
    /// The table's rows `order.covered..upto` are in `rows`, its owners as they were after
    /// `owner_changes` changes.
    upto: usize,
    owner_changes: u64,
}

impl Tail {
    fn of(order: &PersonOrder, table: &EventTable) -> Tail {
        let mut tail = Tail { upto: order.covered, owner_changes: table.owner_changes(), ..Tail::default() };
        if table.owner_changes() != order.owner_changes {
            let mut replaced = Vec::new();
            let mut moved = |person: usize| {
                // People after the build have no covered rows: only the tail's, owned as they
                // are now.
                let (Some(&then), Some(&now)) = (order.canonical.get(person), table.canonical.get(person)) else {
                    return;
                };
                if then != now {
                    replaced.extend(order.block_of(then));
                    replaced.extend(order.block_of(now));
                }
            };
            match table.owners_changed_since(order.owner_changes) {
                Some(people) => people.iter().for_each(|&person| moved(person as usize)),
                // No longer logged (`serves` says rebuild): compare every person.
                None => (0..order.canonical.len()).for_each(&mut moved),
            }
            replaced.sort_unstable();
            replaced.dedup();
            for &i in &replaced {
                tail.rows.entry(order.people[i]).or_default();
                for &row in &order.rows[order.starts[i] as usize..order.starts[i + 1] as usize] {
                    let person = table.canonical[table.person[row as usize] as usize];
                    tail.rows.entry(person).or_default().push(row);
                }
            }
            tail.replaced = replaced;
            let people: Vec<u32> = tail.rows.keys().copied().collect();
            tail.place(order, people);
        }
        tail.extend(order, table);
        tail
    }

    /// Adds the table's rows appended since `upto` (owners unchanged since this tail was made).
    fn extend(&mut self, order: &PersonOrder, table: &EventTable) {
        let mut added = Vec::new();
        for row in self.upto..table.len() {
            let person = table.canonical[table.person[row] as usize];
            let rows = self.rows.entry(person).or_insert_with(|| {
                added.push(person);
                Vec::new()
            });
            rows.push(row as u32);
        }
        self.upto = table.len();
        self.place(order, added);
    }

    /// Files `people`, new to `rows`, under `existing` or `new_people`, keeping both ascending.
    fn place(&mut self, order: &PersonOrder, people: Vec<u32>) {
        let (mut existing, mut new_people) = (Vec::new(), Vec::new());
        for person in people {
            match order.block_of(person) {
                Some(i) => existing.push(i),
                None => new_people.push(person),
            }
        }
        // Two ascending runs: the sort merges them in linear time.
        existing.sort_unstable();
        self.existing.append(&mut existing);
        self.existing.sort();
        new_people.sort_unstable();
        self.new_people.append(&mut new_people);
        self.new_people.sort();
    }
}

/// Scratch space for a person whose events are split between the order and the tail.
#[derive(Default)]
struct Merged {
    rows: Vec<u32>,
    times: Vec<Micros>,
    names: Vec<u32>,
    /// Filled by `merge` only (empty after `fill`).
    positions: Vec<u32>,
}

/// One name's group being merged: (name, the position of its next row in the name's index,
/// its rows left, their times).
type MergePart<'a> = (u32, u32, &'a [u32], &'a [Micros]);

impl Merged {
    fn fill(&mut self, table: &EventTable, sorted: &[u32], extra: &[u32]) -> PersonEvents<'_> {
        self.positions.clear();
        self.rows.clear();
        self.rows.extend_from_slice(sorted);
        self.rows.extend_from_slice(extra);
        self.rows.sort_unstable_by_key(|&r| (table.time_of(r as usize), r));
        self.times.clear();
        self.times.extend(self.rows.iter().map(|&r| table.time_of(r as usize)));
        self.names.clear();
        self.names.extend(self.rows.iter().map(|&r| table.name[r as usize]));
        self.events()
    }

    /// `fill`, keeping only the rows of `names`.
    fn fill_named(&mut self, table: &EventTable, sorted: &[u32], extra: &[u32], names: &[u32]) -> PersonEvents<'_> {
        self.fill(table, sorted, extra);
        let mut kept = 0;
        for i in 0..self.rows.len() {
            if names.contains(&self.names[i]) {
                self.rows[kept] = self.rows[i];
                self.times[kept] = self.times[i];
                self.names[kept] = self.names[i];
                kept += 1;
            }
        }
        self.rows.truncate(kept);
        self.times.truncate(kept);
        self.names.truncate(kept);
        self.events()
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.times.clear();
        self.names.clear();
        self.positions.clear();
    }

    /// Replaces the columns with `parts` (name, rows, times), each sorted by (time, row),
    /// merged by (time, row). Consumes the parts.
    fn merge(&mut self, parts: &mut [MergePart<'_>]) {
        self.clear();
        loop {
            let next = parts
                .iter()
                .enumerate()
                .filter(|(_, p)| !p.2.is_empty())
                .min_by_key(|(_, p)| (p.3[0], p.2[0]))
                .map(|(k, _)| k);
            let Some(k) = next else { return };
            let (name, position, rows, times) = &mut parts[k];
            self.rows.push(rows[0]);
            self.times.push(times[0]);
            self.names.push(*name);
            self.positions.push(*position);
            *position += 1;
            *rows = &rows[1..];
            *times = &times[1..];
        }
    }

    fn events(&self) -> PersonEvents<'_> {
        PersonEvents {
            rows: &self.rows,
            times: &self.times,
            names: &self.names,
            indexed_at: None,
            positions: &self.positions,
        }
    }
}

/// The cached order of a project: shared by concurrent queries, rebuilt when stale.
///
/// A query that finds the order being built (after a start, or by another query) does not
/// wait for it when it scans only some event names: it reads an order of those names
/// (`for_names`), a fraction of the work, kept for the next such queries while the build runs.
#[derive(Debug, Default)]
pub struct PersonOrderCache {
    current: parking_lot::Mutex<Option<Arc<PersonOrder>>>,
    /// The last order of some names built while `current` was being built.
    named: parking_lot::Mutex<Option<Arc<PersonOrder>>>,
}

impl PersonOrderCache {
    /// A cache for a fork of the table (`EventTable::fork`) that starts with this one's orders:
    /// the fork's rows keep their numbers, so they serve it too. An order being built (its
    /// lock held) is not waited for: the fork's first query builds its own.
    pub fn fork(&self) -> PersonOrderCache {
        let copy =
            |slot: &parking_lot::Mutex<Option<Arc<PersonOrder>>>| slot.try_lock().and_then(|order| order.clone());
        PersonOrderCache {
            current: parking_lot::Mutex::new(copy(&self.current)),
            named: parking_lot::Mutex::new(copy(&self.named)),
        }
    }

    /// The order of all rows, built if stale (waiting for a build under way).
    pub fn get(&self, table: &EventTable) -> Arc<PersonOrder> {
        self.whole(&mut self.current.lock(), table)
    }

    /// The whole order in `current` (under its lock), built if stale. It serves then, so the
    /// kept order of some names goes: it would only take space. (While another query builds
    /// one, it stays until the next call.)
    fn whole(&self, current: &mut Option<Arc<PersonOrder>>, table: &EventTable) -> Arc<PersonOrder> {
        if let Some(mut named) = self.named.try_lock() {
            named.take();
        }
        match current.as_ref() {
            Some(order) if order.serves(table) => order.clone(),
            _ => {
                let started = std::time::Instant::now();
                let order = Arc::new(PersonOrder::build(table));
                tracing::info!(
                    rows = order.covered,
                    people = order.people.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "built events by person"
                );
                *current = Some(order.clone());
                order
            }
        }
    }

    /// Holds the lock a build of the whole order holds, as if one were under way.
    #[cfg(test)]
    pub(crate) fn hold_building(&self) -> parking_lot::MutexGuard<'_, Option<Arc<PersonOrder>>> {
        self.current.lock()
    }

    /// An order that serves named scans of `names`: the order of all rows unless it is being
    /// built right now, and then an order of some names that holds these (see
    /// `PersonOrder::holds`).
    pub fn for_names(&self, table: &EventTable, names: &[u32]) -> Arc<PersonOrder> {
        if let Some(mut current) = self.current.try_lock() {
            return self.whole(&mut current, table);
        }
        let mut named = self.named.lock();
        let cached = named.as_ref().filter(|order| order.serves(table));
        if let Some(order) = cached.filter(|order| order.holds(names)) {
            return order.clone();
        }
        // The cached names too, so queries alternating between two sets build once each.
        let mut wanted = names.to_vec();
        if let Some(only) = cached.and_then(|order| order.only.as_ref()) {
            wanted.extend((0..only.len() as u32).filter(|&name| only[name as usize]));
        }
        let order = Arc::new(PersonOrderCache::named(table, &wanted, None));
        *named = Some(order.clone());
        order
    }

    /// `order` with the rows of `names` too, at the same state (see `PersonOrder::build_named`).
    pub fn widened(&self, table: &EventTable, order: &PersonOrder, names: &[u32]) -> Arc<PersonOrder> {
        Arc::new(PersonOrderCache::named(table, names, Some(order)))
    }

    fn named(table: &EventTable, names: &[u32], like: Option<&PersonOrder>) -> PersonOrder {
        let started = std::time::Instant::now();
        let order = PersonOrder::build_named(table, query_threads(table), names, like);
        tracing::info!(
            rows = order.rows.len(),
            covered = order.covered,
            people = order.people.len(),
            names = order.only.as_ref().map_or(0, |only| only.iter().filter(|held| **held).count()),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built events by person for some names, as the whole order is being built"
        );
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Event;
    use crate::core::store::table::NONE;

    fn push(table: &mut EventTable, id: &str, name: &str, user: &str, anon: &str, t: Micros) {
        table.push(&Event {
            event_id: id.into(),
            name: name.into(),
            user_id: user.into(),
            anonymous_id: anon.into(),
            timestamp: t,
            properties: vec![],
        });
    }

    /// Timing, not run by default (BENCHMARKS.md, session 25): a 1 M-row tail spread over
    /// 400,000 people past 8 M covered rows, grouped from scratch (as every query did) against
    /// the kept tail extended by 1,000 rows per query, and a named scan with each. The kept
    /// tail must equal one made afresh.
    /// `cargo test --release --lib kept_tail_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn kept_tail_timing() {
        let event = |i: usize| Event {
            event_id: format!("e{i}"),
            name: ["a", "b", "c", "d", "e"][i % 5].into(),
            user_id: format!("u{}", (i * 7919) % 400_000),
            anonymous_id: String::new(),
            timestamp: i as i64 * 1000,
            properties: vec![],
        };
        let mut table = EventTable::default();
        (0..8_000_000).for_each(|i| table.push(&event(i)));
        let order = PersonOrder::build(&table);
        let mut next = 8_000_000;
        for _ in 0..1_000_000 {
            table.push(&event(next));
            next += 1;
        }
        let time = |what: &str, f: &mut dyn FnMut()| {
            let started = std::time::Instant::now();
            f();
            eprintln!("{what}: {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
        };
        let scan = |order: &PersonOrder, table: &EventTable, tail: &Tail| {
            let mut events = 0;
            let everyone = 0..order.people.len();
            order.visit_rows(table, tail, Rows::Named(&[0, 1]), everyone, &tail.new_people, &mut |_, e| {
                events += e.len()
            });
            events
        };
        // Anonymous memory (KiB), to see what the kept tail holds between queries.
        let rss_anon = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let line = status.lines().find(|line| line.starts_with("RssAnon:")).unwrap_or("RssAnon: 0 kB");
            line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).unwrap_or(0)
        };
        let before = rss_anon();
        drop(order.tail(&table));
        eprintln!("kept tail: {} MiB more anonymous memory", (rss_anon().saturating_sub(before)) / 1024);
        time("first scan: the names' indexes", &mut || {
            scan(&order, &table, &order.tail(&table));
        });
        for round in 0..5 {
            for _ in 0..1000 {
                table.push(&event(next));
                next += 1;
            }
            let mut made = Arc::new(Tail::default());
            time(&format!("round {round}: tail made from scratch"), &mut || made = Arc::new(Tail::of(&order, &table)));
            let mut kept = Arc::new(Tail::default());
            time(&format!("round {round}: kept tail extended"), &mut || kept = order.tail(&table));
            assert_eq!(
                (&kept.rows, &kept.new_people, &kept.existing, kept.upto),
                (&made.rows, &made.new_people, &made.existing, made.upto)
            );
            time(&format!("round {round}: named scan with it"), &mut || {
                scan(&order, &table, &kept);
            });
            drop(kept);
        }
    }

    /// Events (user, name, time) as ids `e{first + i}`: users 8 and up arrive anonymous
    /// (`a{user}`), names 0..3 are a, b, c.
    fn push_all(table: &mut EventTable, events: &[(u8, u8, i64)], first: usize) {
        for (i, &(user, name, t)) in events.iter().enumerate() {
            let (user_id, anon) =
                if user >= 8 { (String::new(), format!("a{user}")) } else { (format!("u{user}"), String::new()) };
            push(table, &format!("e{}", first + i), ["a", "b", "c"][name as usize], &user_id, &anon, t);
        }
    }

    fn collect(order: &PersonOrder, table: &EventTable) -> Vec<(String, Vec<u32>, Vec<Micros>)> {
        let mut seen = Vec::new();
        order.for_each_named(table, Rows::All, |person, events| {
            assert_eq!(events.times.len(), events.rows.len());
            for (i, &row) in events.rows.iter().enumerate() {
                assert_eq!(events.times[i], table.time_of(row as usize));
                assert_eq!(events.names[i], table.name[row as usize]);
            }
            seen.push((table.person_name(person).to_owned(), events.rows.to_vec(), events.times.to_vec()));
        });
        seen.sort();
        seen
    }

    proptest::proptest! {
        /// Built on any number of threads, the order is the table's rows sorted by (canonical
        /// person, time, row), with each person's start, and the names along.
        #[test]
        fn any_thread_count_builds_the_sorted_order(
            events in proptest::collection::vec((0u8..12, 0u8..3, 0i64..20), 0..120),
            aliases in proptest::collection::vec((0u8..12, 0u8..12), 0..4),
            threads in 1usize..5,
        ) {
            let mut table = EventTable::default();
            for (i, &(user, name, t)) in events.iter().enumerate() {
                // Users 8 and up arrive anonymous: aliases can move them to a user.
                let (user_id, anon) = if user >= 8 { (String::new(), format!("a{user}")) } else { (format!("u{user}"), String::new()) };
                push(&mut table, &format!("e{i}"), ["a", "b", "c"][name as usize], &user_id, &anon, t);
            }
            for &(anon, user) in &aliases {
                table.alias(&format!("a{}", 8 + anon % 4), &format!("u{}", user % 8));
            }
            let mut want: Vec<(u32, Micros, u32)> = (0..table.len())
                .map(|r| (table.canonical[table.person[r] as usize], table.time_of(r), r as u32))
                .collect();
            want.sort_unstable();
            let order = PersonOrder::build_with(&table, threads);
            proptest::prop_assert_eq!(order.rows.to_vec(), want.iter().map(|w| w.2).collect::<Vec<_>>());
            proptest::prop_assert_eq!(order.times.to_vec(), want.iter().map(|w| w.1).collect::<Vec<_>>());
            let names: Vec<u32> = want.iter().map(|w| table.name[w.2 as usize]).collect();
            proptest::prop_assert_eq!(order.names.to_vec(), names);
            let mut people: Vec<u32> = want.iter().map(|w| w.0).collect();
            people.dedup();
            proptest::prop_assert_eq!(order.people.to_vec(), people.clone());
            for (i, &person) in people.iter().enumerate() {
                let first = want.iter().position(|w| w.0 == person).unwrap() as u32;
                proptest::prop_assert_eq!(order.starts[i], first);
            }
            proptest::prop_assert_eq!(order.starts.last().copied(), Some(table.len() as u32));
            // Its name index reads each name's rows as a filtered full scan does, and equals
            // the one-thread build's.
            for names in [&[0u32][..], &[1], &[2], &[0, 2], &[0, 1, 2]] {
                proptest::prop_assert_eq!(named_scan(&order, &table, names), filtered_full_scan(&order, &table, names));
            }
            // The names were indexed one scan at a time above; on one thread, all at once, they
            // are the same.
            let single = PersonOrder::build_with(&table, 1);
            proptest::prop_assert_eq!(order.by_name.len(), single.by_name.len());
            let all: Vec<u32> = (0..order.by_name.len() as u32).collect();
            proptest::prop_assert!(single.by_name.iter().all(|index| index.get().is_none()), "made on first use");
            let (indexes, ones) = (order.name_indexes(&table, &all), single.name_indexes(&table, &all));
            for (index, one) in indexes.into_iter().zip(ones) {
                let (index, one) = (index.expect("a known name"), one.expect("a known name"));
                proptest::prop_assert_eq!(
                    (index.people.to_vec(), index.starts.to_vec(), index.rows.to_vec(), index.times.to_vec(), index.longest),
                    (one.people.to_vec(), one.starts.to_vec(), one.rows.to_vec(), one.times.to_vec(), one.longest)
                );
            }
            let longest = |name: u32| {
                let runs = people.iter().map(|&p| want.iter().filter(|w| w.0 == p && table.name[w.2 as usize] == name).count());
                runs.max().unwrap_or(0)
            };
            for name in all {
                proptest::prop_assert_eq!(order.name_index(&table, name).map(|index| index.longest), Some(longest(name)));
            }
        }

        /// Owner changes after the build (new links, moves to another user, unlinks), with a
        /// tail, are applied at read time: the order built before them visits the same people
        /// with the same events as one built after, in full and named scans, on any threads.
        /// Also when the table's log of changes no longer reaches back to the build (then the
        /// order asks for a rebuild, and reads the same meanwhile).
        #[test]
        fn an_order_built_before_aliases_reads_as_one_built_after(
            events in proptest::collection::vec((0u8..12, 0u8..3, 0i64..20), 1..120),
            before in proptest::collection::vec((0u8..4, 0u8..8), 0..3),
            after in proptest::collection::vec((0u8..4, 0u8..8), 1..5),
            unlink in proptest::option::of(0u8..8),
            tail in proptest::collection::vec((0u8..12, 0u8..3, 0i64..20), 0..20),
            trimmed in proptest::bool::ANY,
        ) {
            let mut table = EventTable::default();
            let alias = |table: &mut EventTable, links: &[(u8, u8)]| {
                for &(anon, user) in links {
                    table.alias(&format!("a{}", 8 + anon), &format!("u{user}"));
                }
            };
            push_all(&mut table, &events, 0);
            alias(&mut table, &before);
            let order = PersonOrder::build(&table);
            alias(&mut table, &after);
            if let Some(user) = unlink.and_then(|u| table.find_user(&format!("u{u}"))) {
                table.unalias_all(user);
            }
            push_all(&mut table, &tail, events.len());
            if trimmed {
                table.log_owner_changes_within(&[], 0);
            }
            proptest::prop_assert_eq!(order.serves(&table), !trimmed || table.owner_changes() == order.owner_changes);
            let fresh = PersonOrder::build(&table);
            proptest::prop_assert_eq!(collect(&order, &table), collect(&fresh, &table));
            for names in [&[0u32][..], &[1, 2], &[0, 1, 2]] {
                let mut stale = named_scan(&order, &table, names);
                let mut rebuilt = named_scan(&fresh, &table, names);
                stale.sort();
                rebuilt.sort();
                proptest::prop_assert_eq!(stale, rebuilt, "names {:?}", names);
            }
            assert_named_scans_match(&order, &table);
        }

        /// Queries between writes keep one tail and extend it: after each step (rows
        /// appended, or an owner change, which makes the tail again), the kept order reads as
        /// one built now, and while only rows were appended it is the same tail, grown.
        #[test]
        fn the_tail_kept_between_queries_reads_as_a_fresh_build(
            events in proptest::collection::vec((0u8..12, 0u8..3, 0i64..20), 1..80),
            steps in proptest::collection::vec(
                (proptest::option::of((0u8..4, 0u8..8)), proptest::collection::vec((0u8..12, 0u8..3, 0i64..20), 0..12)),
                1..6,
            ),
        ) {
            let mut table = EventTable::default();
            push_all(&mut table, &events, 0);
            let order = PersonOrder::build(&table);
            let mut pushed = events.len();
            for (link, rows) in &steps {
                // The kept tail's address and state; no reference is held, so a query can
                // grow it in place.
                let kept = order.tail.lock().as_ref().map(|tail| (Arc::as_ptr(tail), tail.owner_changes));
                if let Some((anon, user)) = link {
                    table.alias(&format!("a{}", 8 + anon), &format!("u{user}"));
                }
                push_all(&mut table, rows, pushed);
                pushed += rows.len();
                let fresh = PersonOrder::build(&table);
                proptest::prop_assert_eq!(collect(&order, &table), collect(&fresh, &table));
                let tail = order.tail.lock().clone().expect("kept by the query");
                proptest::prop_assert_eq!(tail.upto, table.len());
                if let Some((at, _)) = kept.filter(|&(_, changes)| changes == table.owner_changes()) {
                    proptest::prop_assert!(std::ptr::eq(at, Arc::as_ptr(&tail)), "extended in place, not made again");
                }
                let mut stale = named_scan(&order, &table, &[0, 2]);
                let mut rebuilt = named_scan(&fresh, &table, &[0, 2]);
                stale.sort();
                rebuilt.sort();
                proptest::prop_assert_eq!(stale, rebuilt);
            }
        }
    }

    proptest::proptest! {
        /// An order of some names, built before aliases and a tail, reads every set of the
        /// names it holds as a whole order built after them does, in full and in parts; one
        /// widened at its state holds more names and gives the ones it had the same positions.
        #[test]
        fn an_order_of_some_names_reads_them_as_the_whole_order_does(
            events in proptest::collection::vec((0u8..12, 0u8..3, 0i64..20), 1..120),
            held in 1u8..8,
            added in 0u8..8,
            after in proptest::collection::vec((0u8..4, 0u8..8), 0..4),
            tail in proptest::collection::vec((0u8..12, 0u8..3, 0i64..20), 0..20),
            threads in 1usize..5,
        ) {
            let mut table = EventTable::default();
            push_all(&mut table, &events, 0);
            let ids = |mask: u8| -> Vec<u32> { (0..3u32).filter(|&k| mask & (1 << k) != 0).collect() };
            let named = PersonOrder::build_named(&table, threads, &ids(held), None);
            // Its rows: the held names' rows sorted by (canonical person, time, row).
            let known = table.names().len() as u32;
            let mut want: Vec<(u32, Micros, u32)> = (0..table.len())
                .filter(|&r| table.name[r] < known && held & (1 << table.name[r]) != 0)
                .map(|r| (table.canonical[table.person[r] as usize], table.time_of(r), r as u32))
                .collect();
            want.sort_unstable();
            proptest::prop_assert_eq!(named.rows.to_vec(), want.iter().map(|w| w.2).collect::<Vec<_>>());
            proptest::prop_assert!(!named.is_whole());
            for &(anon, user) in &after {
                table.alias(&format!("a{}", 8 + anon), &format!("u{user}"));
            }
            push_all(&mut table, &tail, events.len());
            proptest::prop_assert!(named.serves(&table));
            let whole = PersonOrder::build(&table);
            let wider = PersonOrder::build_named(&table, threads, &ids(added), Some(&named));
            proptest::prop_assert!(wider.holds(&ids(held | added)));
            for mask in 1u8..8 {
                let names = ids(mask);
                // Plus a name unknown to the build, which selects nothing.
                let asked: Vec<u32> = names.iter().copied().chain([known + 3, NONE]).collect();
                let expected = named_scan(&whole, &table, &names);
                for order in [&named, &wider] {
                    // It holds the names it was built for (and may hold names with no
                    // covered rows); wherever it says it holds, it reads as the whole order.
                    let has = if std::ptr::eq(order, &named) { held } else { held | added };
                    if mask & !has == 0 {
                        proptest::prop_assert!(order.holds(&names));
                    }
                    if !order.holds(&names) {
                        continue;
                    }
                    let mut seen = named_scan(order, &table, &asked);
                    let mut rebuilt = expected.clone();
                    seen.sort();
                    rebuilt.sort();
                    proptest::prop_assert_eq!(seen.clone(), rebuilt, "names {:?}", names);
                    let parts = order.fold_parts_named(&table, threads, Rows::Named(&asked), Vec::new, |seen, person, e| {
                        seen.push((person, e.rows.to_vec(), e.times.to_vec(), e.names.to_vec()));
                    });
                    let mut parts = parts.concat();
                    parts.sort();
                    proptest::prop_assert_eq!(parts, seen);
                }
            }
            for name in ids(held) {
                let (before, widened) = (named.name_index(&table, name), wider.name_index(&table, name));
                // (No index, for a name unknown at the build, is no rows.)
                let rows = |index: Option<&NameIndex>| index.map(|index| index.rows.to_vec()).unwrap_or_default();
                proptest::prop_assert_eq!(rows(before), rows(widened));
            }
        }
    }

    /// While the whole order is being built, a named scan gets an order of its names, kept for
    /// the next scans of those names and widened by scans of others; after, the whole order.
    #[test]
    fn a_named_scan_does_not_wait_for_the_whole_order_being_built() {
        let mut table = EventTable::default();
        scattered(&mut table, 0, 300);
        let (a, b, c) = (0, 1, 2);
        let cache = PersonOrderCache::default();
        let whole = PersonOrder::build(&table);
        {
            let _building = cache.current.lock();
            let first = cache.for_names(&table, &[a]);
            assert!(!first.is_whole() && first.holds(&[a]) && !first.holds(&[b]));
            assert!(Arc::ptr_eq(&cache.for_names(&table, &[a]), &first), "kept for the next scan");
            let both = cache.for_names(&table, &[b]);
            assert!(both.holds(&[a, b]) && !both.holds(&[c]), "the kept names and the new ones");
            assert_eq!(named_scan(&both, &table, &[a, b]), named_scan(&whole, &table, &[a, b]));
            // A write makes a new tail: the kept order still serves it.
            push(&mut table, "late", "a", "u1", "", 1);
            assert!(Arc::ptr_eq(&cache.for_names(&table, &[a, b]), &both));
            let wider = cache.widened(&table, &first, &[c]);
            assert!(wider.holds(&[a, c]) && !wider.holds(&[b]));
            assert_eq!(
                wider.name_index(&table, a).map(|index| index.rows.to_vec()),
                first.name_index(&table, a).map(|index| index.rows.to_vec()),
                "a widened order keeps the positions of the names it had"
            );
            assert!(cache.current.is_locked());
        }
        assert!(cache.named.lock().is_some());
        let after = cache.for_names(&table, &[a]);
        assert!(after.is_whole(), "no build under way: the whole order, built");
        assert!(cache.named.lock().is_none(), "the order of some names is dropped then");
        assert!(Arc::ptr_eq(&after, &cache.get(&table)));
    }

    /// A name's index is made when a scan first asks for it, with the scan's other missing
    /// names, once, also when parts of a scan on several threads ask at the same time; a
    /// name new since the build has none (its rows are in the tail).
    #[test]
    fn name_indexes_are_made_for_the_names_scans_ask_for() {
        let mut table = EventTable::default();
        for (i, (name, user, t)) in
            [("a", "u1", 3), ("b", "u1", 1), ("c", "u2", 2), ("a", "u2", 5), ("b", "u3", 4), ("a", "u3", 1)]
                .into_iter()
                .enumerate()
        {
            push(&mut table, &format!("e{i}"), name, user, "", t);
        }
        let order = PersonOrder::build_with(&table, 2);
        let made =
            |order: &PersonOrder| -> Vec<bool> { order.by_name.iter().map(|index| index.get().is_some()).collect() };
        assert_eq!(made(&order), [false, false, false], "none before a named scan");
        let (a, b, c) = (0, 1, 2);
        assert_eq!(named_scan(&order, &table, &[a]), filtered_full_scan(&order, &table, &[a]));
        assert_eq!(made(&order), [true, false, false]);
        let first = order.by_name[a as usize].get().map(|index| index.rows.as_ptr());
        // Two parts on two threads ask for a and c: c is made once, a is kept.
        let parts = order.fold_parts_named(&table, 2, Rows::Named(&[c, a]), Vec::new, |seen, person, events| {
            seen.push((person, events.rows.to_vec()))
        });
        assert_eq!(parts.concat().len(), 3, "u1, u2 and u3 did a or c");
        assert_eq!(made(&order), [true, false, true]);
        assert_eq!(order.by_name[a as usize].get().map(|index| index.rows.as_ptr()), first);
        assert_eq!(order.strings(&table, b, 0).len(), 2, "b's two rows, made for the property");
        assert_eq!(made(&order), [true, true, true]);
        // A name first seen after the build: its rows come from the tail.
        push(&mut table, "e6", "d", "u1", "", 9);
        let d = table.names().len() as u32 - 1;
        assert!(order.serves(&table));
        assert_eq!(named_scan(&order, &table, &[d, a]), filtered_full_scan(&order, &table, &[d, a]));
        assert_eq!(order.by_name.len(), 3);
    }

    #[test]
    fn people_in_time_order_with_aliases_and_a_tail() {
        let mut table = EventTable::default();
        push(&mut table, "e0", "a", "u1", "", 30);
        push(&mut table, "e1", "b", "u2", "", 10);
        push(&mut table, "e2", "a", "u1", "", 10);
        push(&mut table, "e3", "a", "", "x", 20);
        table.alias("x", "u1");
        let order = PersonOrder::build(&table);
        assert!(order.serves(&table));
        assert_eq!(
            collect(&order, &table),
            vec![("u1".into(), vec![2, 3, 0], vec![10, 20, 30]), ("u2".into(), vec![1], vec![10])]
        );
        // A tail: u1 gets an earlier event, u3 is new; equal times keep arrival order.
        push(&mut table, "e4", "b", "u1", "", 5);
        push(&mut table, "e5", "b", "u3", "", 7);
        push(&mut table, "e6", "b", "u2", "", 10);
        assert!(order.serves(&table));
        assert_eq!(
            collect(&order, &table),
            vec![
                ("u1".into(), vec![4, 2, 3, 0], vec![5, 10, 20, 30]),
                ("u2".into(), vec![1, 6], vec![10, 10]),
                ("u3".into(), vec![5], vec![7]),
            ]
        );
        // Split in parts, the same people and events come back, in the same order.
        for threads in 1..=4 {
            let parts = order.fold_parts_named(&table, threads, Rows::All, Vec::new, |seen, person, events| {
                seen.push((person, events.rows.to_vec()));
            });
            assert_eq!(parts.len(), threads.min(2), "two cached people at most two parts");
            let mut all = Vec::new();
            order.for_each_named(&table, Rows::All, |person, events| all.push((person, events.rows.to_vec())));
            assert_eq!(parts.concat(), all);
        }
        // Moving an alias changes who owns rows: the order moves them at read time.
        table.alias("x", "u2");
        assert!(order.serves(&table));
        let rebuilt = PersonOrder::build(&table);
        assert_eq!(collect(&rebuilt, &table)[1], ("u2".into(), vec![1, 6, 3], vec![10, 10, 20]));
        assert_eq!(collect(&order, &table), collect(&rebuilt, &table));
    }

    type Visit = (u32, Vec<u32>, Vec<Micros>, Vec<u32>);

    /// What a named scan must give: the full scan's people and events, in its order, keeping
    /// only rows of `names` and people left with some.
    fn filtered_full_scan(order: &PersonOrder, table: &EventTable, names: &[u32]) -> Vec<Visit> {
        let mut seen = Vec::new();
        order.for_each_named(table, Rows::All, |person, events| {
            let keep: Vec<usize> = (0..events.len()).filter(|&i| names.contains(&events.names[i])).collect();
            if !keep.is_empty() {
                seen.push((
                    person,
                    keep.iter().map(|&i| events.rows[i]).collect(),
                    keep.iter().map(|&i| events.times[i]).collect(),
                    keep.iter().map(|&i| events.names[i]).collect(),
                ));
            }
        });
        seen
    }

    fn named_scan(order: &PersonOrder, table: &EventTable, names: &[u32]) -> Vec<Visit> {
        let mut seen = Vec::new();
        order.for_each_named(table, Rows::Named(names), |person, events| {
            // A known position is the row's place in its own name's index.
            for i in 0..events.len() {
                if let Some(at) = events.position(i) {
                    let index = order.by_name[events.names[i] as usize].get().expect("indexed by the scan");
                    assert_eq!(index.rows[at], events.rows[i]);
                }
            }
            seen.push((person, events.rows.to_vec(), events.times.to_vec(), events.names.to_vec()));
        });
        seen
    }

    /// Every subset of the table's names (plus an unknown id), through `for_each_named` and
    /// `fold_parts_named` on 1 to 4 threads, against the filtered full scan.
    fn assert_named_scans_match(order: &PersonOrder, table: &EventTable) {
        let known = table.names().len() as u32;
        let ids: Vec<u32> = (0..known).chain([known + 3, NONE]).collect();
        for mask in 0..(1u32 << ids.len()) {
            let names: Vec<u32> = (0..ids.len()).filter(|&k| mask & (1 << k) != 0).map(|k| ids[k]).collect();
            let expected = filtered_full_scan(order, table, &names);
            assert_eq!(named_scan(order, table, &names), expected, "names {names:?}");
            for threads in 1..=4 {
                let parts = order.fold_parts_named(table, threads, Rows::Named(&names), Vec::new, |seen, person, e| {
                    seen.push((person, e.rows.to_vec(), e.times.to_vec(), e.names.to_vec()));
                });
                assert_eq!(parts.concat(), expected, "names {names:?}, {threads} threads");
            }
        }
        // `Rows::All` is the full scan.
        let mut all = Vec::new();
        order.for_each_named(table, Rows::All, |person, e| all.push((person, e.rows.to_vec())));
        let mut full = Vec::new();
        order.for_each_named(table, Rows::All, |person, e| full.push((person, e.rows.to_vec())));
        assert_eq!(all, full);
    }

    /// A table of `people` users and anonymous ids doing events of four names at scattered
    /// times, some of them twice at the same time.
    fn scattered(table: &mut EventTable, from: usize, to: usize) {
        let names = ["a", "b", "c", "d"];
        for i in from..to {
            let (user, anon) = if i % 7 == 3 {
                (String::new(), format!("x{}", i % 11))
            } else {
                (format!("u{}", i % 13), String::new())
            };
            let name = names[(i * 5 + i / 3) % if i % 17 == 0 { 4 } else { 3 }];
            push(table, &format!("e{i}"), name, &user, &anon, ((i * 37) % 101) as Micros);
        }
    }

    #[test]
    fn named_scans_read_the_names_rows_in_the_full_scans_order() {
        let mut table = EventTable::default();
        scattered(&mut table, 0, 300);
        table.alias("x1", "u1");
        table.alias("x2", "u5");
        let order = PersonOrder::build(&table);
        assert_named_scans_match(&order, &table);

        // Appends: existing people get rows (some of a name the order never saw), new people
        // appear, an anonymous id aliased before shows up in the tail.
        scattered(&mut table, 300, 340);
        push(&mut table, "n1", "fresh", "u2", "", 50);
        push(&mut table, "n2", "fresh", "newcomer", "", 5);
        push(&mut table, "n3", "a", "", "x1", 1);
        push(&mut table, "n4", "b", "", "x99", 2);
        assert!(order.serves(&table));
        assert_named_scans_match(&order, &table);

        // A new alias moves rows to another person: the cached order moves them at read time.
        let cache = PersonOrderCache::default();
        let before = cache.get(&table);
        table.alias("x3", "u4");
        assert!(before.serves(&table));
        let after = cache.get(&table);
        assert!(Arc::ptr_eq(&before, &after));
        assert_named_scans_match(&after, &table);
        let u4 = table.find_user("u4").unwrap();
        let x3_rows: Vec<u32> = table.own_rows(table.find_anonymous("x3").unwrap());
        let mut u4_rows = Vec::new();
        after.for_each_named(&table, Rows::Named(&[0, 1, 2, 3]), |person, e| {
            if person == u4 {
                u4_rows.extend_from_slice(e.rows);
            }
        });
        assert!(x3_rows.iter().all(|r| u4_rows.contains(r)), "x3's rows are u4's now");

        // Removing rows changes the layout: the cache rebuilds without them.
        let u0 = table.find_user("u0").unwrap();
        let removed = table.user_rows(u0);
        for &row in &removed {
            table.erase(row);
        }
        table.unalias_all(u0);
        assert!(!removed.is_empty() && table.settle_removals());
        let compacted = cache.get(&table);
        assert!(!Arc::ptr_eq(&after, &compacted));
        assert_named_scans_match(&compacted, &table);
        let a = table.names().get("a").unwrap();
        for (person, rows, times, names) in named_scan(&compacted, &table, &[a]) {
            assert_ne!(person, u0);
            for (k, &row) in rows.iter().enumerate() {
                assert_eq!((table.time_of(row as usize), table.name[row as usize]), (times[k], names[k]));
                assert_eq!(table.name[row as usize], a);
                assert!(!removed.contains(&row), "row {row} was removed");
            }
        }
        // And an append after the removal is merged in again.
        scattered(&mut table, 400, 420);
        assert!(compacted.serves(&table));
        assert_named_scans_match(&compacted, &table);
    }

    #[test]
    fn numbers_of_a_name_follow_its_index() {
        let mut table = EventTable::default();
        for i in 0..40i64 {
            let value = match i % 4 {
                0 => Some(crate::core::model::Value::Number(i as f64)),
                1 => Some(crate::core::model::Value::String("x".into())),
                2 => None,
                _ => Some(crate::core::model::Value::Number(-0.5 * i as f64)),
            };
            table.push(&Event {
                event_id: format!("e{i}"),
                name: if i % 3 == 0 { "buy".into() } else { "view".into() },
                user_id: format!("u{}", i % 5),
                anonymous_id: String::new(),
                timestamp: (i * 7) % 13,
                properties: value.into_iter().map(|v| ("amount".to_owned(), v)).collect(),
            });
        }
        let order = PersonOrder::build(&table);
        let (buy, amount) = (table.names().get("buy").unwrap(), table.keys().get("amount").unwrap());
        let numbers = order.numbers(&table, buy, amount);
        assert!(Arc::ptr_eq(&numbers, &order.numbers(&table, buy, amount)), "made once");
        // A tail row: its events are merged, so they carry no index position.
        push(&mut table, "t", "buy", "u1", "", 3);
        let mut checked = 0;
        order.for_each_named(&table, Rows::Named(&[buy]), |_, events| {
            for (i, &row) in events.rows.iter().enumerate() {
                if let Some(at) = events.indexed_at {
                    assert_eq!(numbers[at + i], crate::core::filter::row_number(table.row_props(row as usize), amount));
                    checked += 1;
                }
            }
        });
        assert_eq!(checked, 14 - 3, "every buy row of the people without a tail row");
        assert!(order.numbers(&table, NONE - 1, amount).is_empty(), "an unknown name has no rows");
        // Strings likewise: the string id where the property is a string, NONE elsewhere.
        let strings = order.strings(&table, buy, amount);
        let index = order.name_index(&table, buy).expect("a known name");
        assert_eq!(strings.len(), index.rows.len());
        for (at, &row) in index.rows.iter().enumerate() {
            let expected = match table.row_props(row as usize).next().map(|p| p.value()) {
                Some(crate::core::store::table::Cell::Str(id)) => id,
                _ => NONE,
            };
            assert_eq!(strings[at], expected);
        }
        assert!(strings.contains(&table.strings().get("x").unwrap()) && strings.contains(&NONE));
    }

    #[test]
    fn a_named_scan_of_a_table_without_rows_visits_nobody() {
        let table = EventTable::default();
        let order = PersonOrder::build(&table);
        assert!(named_scan(&order, &table, &[0, NONE]).is_empty());
        assert!(order.fold_parts_named(&table, 2, Rows::Named(&[0]), || 0, |n, _, _| *n += 1) == vec![0]);
    }

    #[test]
    fn a_cancelled_scan_stops_within_one_check_interval() {
        let mut table = EventTable::default();
        for i in 0..2_000 {
            push(&mut table, &format!("e{i}"), "a", &format!("u{i}"), "", i);
        }
        let order = PersonOrder::build(&table);
        let token = crate::core::cancel::CancelToken::default();
        let visited = token.scope(|| {
            let mut visited = 0;
            order.for_each_named(&table, Rows::All, |_, _| {
                visited += 1;
                if visited == 10 {
                    token.cancel();
                }
            });
            visited
        });
        assert_eq!(visited, cancel::CHECK_EVERY, "stops at the first check after the cancel");
        for threads in [1, 2, 4] {
            let parts = token.scope(|| order.fold_parts_named(&table, threads, Rows::All, || 0, |n, _, _| *n += 1));
            assert_eq!(parts.iter().sum::<usize>(), 0, "{threads} threads: an already cancelled scan visits nobody");
        }
        let all: usize = order.fold_parts_named(&table, 2, Rows::All, || 0, |n, _, _| *n += 1).iter().sum();
        assert_eq!(all, 2_000, "without a token the scan is whole");
    }
}
