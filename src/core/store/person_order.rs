//! Events ordered by person, then time: the layout funnels, retention and cohort tables scan.
//!
//! Rows arrive in arrival order, so one person's events are scattered and rarely in time
//! order. `PersonOrder` copies (row, time, name) into contiguous arrays sorted by canonical
//! person then time, built once and reused by later queries. Rows appended since the build
//! (the tail) are merged in per person at query time; when the tail grows past a share of
//! the covered rows, or an alias changes who owns which rows, the next query rebuilds.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::core::cancel;
use crate::core::model::Micros;
use crate::core::store::table::EventTable;

/// Rebuild when the unsorted tail exceeds this many rows and an eighth of the covered rows.
const MIN_REBUILD_TAIL: usize = 50_000;

#[derive(Debug, Default)]
pub struct PersonOrder {
    /// Rows `0..covered` are in the arrays below.
    covered: usize,
    /// The table's layout version when built (aliases move rows between people).
    layout: u64,
    /// Canonical people with rows, and where each one's rows start; `starts` has one more
    /// entry than `people`.
    people: Vec<u32>,
    starts: Vec<u32>,
    rows: Vec<u32>,
    times: Vec<Micros>,
    names: Vec<u32>,
}

/// One person's events in time order (ties by arrival): parallel slices.
#[derive(Clone, Copy)]
pub struct PersonEvents<'a> {
    pub rows: &'a [u32],
    pub times: &'a [Micros],
    pub names: &'a [u32],
}

impl PersonEvents<'_> {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl PersonOrder {
    pub fn build(table: &EventTable) -> PersonOrder {
        let mut order = PersonOrder {
            covered: table.len(),
            layout: table.layout_version(),
            people: Vec::new(),
            starts: vec![0],
            rows: Vec::with_capacity(table.len()),
            times: Vec::with_capacity(table.len()),
            names: Vec::with_capacity(table.len()),
        };
        let key = |r: &u32| (table.time[*r as usize], *r);
        for person in 0..table.canonical.len() as u32 {
            if table.canonical[person as usize] != person {
                continue;
            }
            let begin = order.rows.len();
            order.rows.extend_from_slice(&table.person_rows[person as usize]);
            if let Some(anons) = table.aliases.get(&person) {
                for &anon in anons {
                    order.rows.extend_from_slice(&table.person_rows[anon as usize]);
                }
            }
            if order.rows.len() == begin {
                continue;
            }
            let own = &mut order.rows[begin..];
            if !own.is_sorted_by_key(key) {
                own.sort_unstable_by_key(key);
            }
            order.people.push(person);
            order.starts.push(order.rows.len() as u32);
        }
        order.times.extend(order.rows.iter().map(|&r| table.time[r as usize]));
        order.names.extend(order.rows.iter().map(|&r| table.name[r as usize]));
        order
    }

    /// Whether this order can serve `table` (possibly with a tail) without a rebuild.
    pub fn serves(&self, table: &EventTable) -> bool {
        let tail = table.len().saturating_sub(self.covered);
        self.layout == table.layout_version()
            && self.covered <= table.len()
            && (tail <= MIN_REBUILD_TAIL || tail <= self.covered / 8)
    }

    /// Visits every canonical person with rows, with their events in time order.
    pub fn for_each(&self, table: &EventTable, mut visit: impl FnMut(u32, PersonEvents<'_>)) {
        let tail = Tail::of(self, table);
        self.visit_part(table, &tail, 0..self.people.len(), &tail.new_people, &mut visit);
    }

    /// Like `for_each`, split into contiguous parts of people run on up to `threads` threads
    /// (see `query_threads`): each part folds into its own state from `init`; the states come
    /// back in part order.
    pub fn fold_parts<S: Send>(
        &self,
        table: &EventTable,
        threads: usize,
        init: impl Fn() -> S + Sync,
        visit: impl Fn(&mut S, u32, PersonEvents<'_>) + Sync,
    ) -> Vec<S> {
        let tail = Tail::of(self, table);
        let parts = threads.clamp(1, self.people.len().max(1));
        let bounds: Vec<usize> = (0..=parts).map(|k| k * self.people.len() / parts).collect();
        let token = cancel::current();
        let run = |k: usize| {
            let mut state = init();
            let extra: &[u32] = if k + 1 == parts { &tail.new_people } else { &[] };
            self.visit_part(table, &tail, bounds[k]..bounds[k + 1], extra, &mut |person, events| {
                visit(&mut state, person, events)
            });
            state
        };
        if parts == 1 {
            return vec![run(0)];
        }
        std::thread::scope(|scope| {
            let token = token.as_ref();
            let handles: Vec<_> = (1..parts).map(|k| scope.spawn(move || cancel::within(token, || run(k)))).collect();
            let mut states = vec![run(0)];
            // A panic in a part is a bug; re-raise it on the calling thread.
            states.extend(handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))));
            states
        })
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
            };
            match tail.rows.get(&person) {
                None => visit(person, events),
                Some(extra) => visit(person, merged.fill(table, events.rows, extra)),
            }
        }
        for (i, person) in new_people.iter().enumerate() {
            if i.is_multiple_of(cancel::CHECK_EVERY) && cancel::stopped() {
                return;
            }
            visit(*person, merged.fill(table, &[], &tail.rows[person]));
        }
    }
}

/// Below this many rows a query is not worth splitting across threads.
const MIN_PARALLEL_ROWS: usize = 200_000;

/// How many threads a scan of `table` should use: one per core for large tables.
pub fn query_threads(table: &EventTable) -> usize {
    if table.len() < MIN_PARALLEL_ROWS {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Rows appended since an order was built, per canonical person.
struct Tail {
    rows: HashMap<u32, Vec<u32>>,
    /// People with tail rows only, ascending.
    new_people: Vec<u32>,
}

impl Tail {
    fn of(order: &PersonOrder, table: &EventTable) -> Tail {
        let mut rows: HashMap<u32, Vec<u32>> = HashMap::new();
        for row in order.covered..table.len() {
            let person = table.canonical[table.person[row] as usize];
            rows.entry(person).or_default().push(row as u32);
        }
        // `people` is ascending (built in person id order).
        let mut new_people: Vec<u32> =
            rows.keys().copied().filter(|p| order.people.binary_search(p).is_err()).collect();
        new_people.sort_unstable();
        Tail { rows, new_people }
    }
}

/// Scratch space for a person whose events are split between the order and the tail.
#[derive(Default)]
struct Merged {
    rows: Vec<u32>,
    times: Vec<Micros>,
    names: Vec<u32>,
}

impl Merged {
    fn fill(&mut self, table: &EventTable, sorted: &[u32], extra: &[u32]) -> PersonEvents<'_> {
        self.rows.clear();
        self.rows.extend_from_slice(sorted);
        self.rows.extend_from_slice(extra);
        self.rows.sort_unstable_by_key(|&r| (table.time[r as usize], r));
        self.times.clear();
        self.times.extend(self.rows.iter().map(|&r| table.time[r as usize]));
        self.names.clear();
        self.names.extend(self.rows.iter().map(|&r| table.name[r as usize]));
        PersonEvents { rows: &self.rows, times: &self.times, names: &self.names }
    }
}

/// The cached order of a project: shared by concurrent queries, rebuilt when stale.
#[derive(Debug, Default)]
pub struct PersonOrderCache {
    current: parking_lot::Mutex<Option<Arc<PersonOrder>>>,
}

impl PersonOrderCache {
    pub fn get(&self, table: &EventTable) -> Arc<PersonOrder> {
        let mut current = self.current.lock();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Event;

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

    fn collect(order: &PersonOrder, table: &EventTable) -> Vec<(String, Vec<u32>, Vec<Micros>)> {
        let mut seen = Vec::new();
        order.for_each(table, |person, events| {
            assert_eq!(events.times.len(), events.rows.len());
            for (i, &row) in events.rows.iter().enumerate() {
                assert_eq!(events.times[i], table.time[row as usize]);
                assert_eq!(events.names[i], table.name[row as usize]);
            }
            seen.push((table.person_name(person).to_owned(), events.rows.to_vec(), events.times.to_vec()));
        });
        seen.sort();
        seen
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
            let parts = order.fold_parts(&table, threads, Vec::new, |seen, person, events| {
                seen.push((person, events.rows.to_vec()));
            });
            assert_eq!(parts.len(), threads.min(2), "two cached people at most two parts");
            let mut all = Vec::new();
            order.for_each(&table, |person, events| all.push((person, events.rows.to_vec())));
            assert_eq!(parts.concat(), all);
        }
        // Moving an alias changes who owns rows: the order no longer serves.
        table.alias("x", "u2");
        assert!(!order.serves(&table));
        let rebuilt = PersonOrder::build(&table);
        assert_eq!(collect(&rebuilt, &table)[1], ("u2".into(), vec![1, 6, 3], vec![10, 10, 20]));
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
            order.for_each(&table, |_, _| {
                visited += 1;
                if visited == 10 {
                    token.cancel();
                }
            });
            visited
        });
        assert_eq!(visited, cancel::CHECK_EVERY, "stops at the first check after the cancel");
        for threads in [1, 2, 4] {
            let parts = token.scope(|| order.fold_parts(&table, threads, || 0, |n, _, _| *n += 1));
            assert_eq!(parts.iter().sum::<usize>(), 0, "{threads} threads: an already cancelled scan visits nobody");
        }
        let all: usize = order.fold_parts(&table, 2, || 0, |n, _, _| *n += 1).iter().sum();
        assert_eq!(all, 2_000, "without a token the scan is whole");
    }
}
