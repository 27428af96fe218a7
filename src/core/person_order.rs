//! Events ordered by person, then time: the layout funnels, retention and cohort tables scan.
//!
//! Rows arrive in arrival order, so one person's events are scattered and rarely in time
//! order. `PersonOrder` copies (row, time, name) into contiguous arrays sorted by canonical
//! person then time, built once and reused by later queries. Rows appended since the build
//! (the tail) are merged in per person at query time; when the tail grows past a share of
//! the covered rows, or an alias changes who owns which rows, the next query rebuilds.

use std::sync::Arc;

use hashbrown::HashMap;

use super::model::Micros;
use super::table::EventTable;

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
        // Rows appended since the build, per canonical person.
        let mut tail: HashMap<u32, Vec<u32>> = HashMap::new();
        for row in self.covered..table.len() {
            let person = table.canonical[table.person[row] as usize];
            tail.entry(person).or_default().push(row as u32);
        }
        let mut merged = Merged::default();
        for (i, &person) in self.people.iter().enumerate() {
            let span = self.starts[i] as usize..self.starts[i + 1] as usize;
            let events = PersonEvents {
                rows: &self.rows[span.clone()],
                times: &self.times[span.clone()],
                names: &self.names[span],
            };
            match tail.remove(&person) {
                None => visit(person, events),
                Some(extra) => visit(person, merged.fill(table, events.rows, &extra)),
            }
        }
        let mut rest: Vec<(u32, Vec<u32>)> = tail.into_iter().collect();
        rest.sort_unstable_by_key(|(person, _)| *person);
        for (person, extra) in rest {
            visit(person, merged.fill(table, &[], &extra));
        }
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
        // Moving an alias changes who owns rows: the order no longer serves.
        table.alias("x", "u2");
        assert!(!order.serves(&table));
        let rebuilt = PersonOrder::build(&table);
        assert_eq!(collect(&rebuilt, &table)[1], ("u2".into(), vec![1, 6, 3], vec![10, 10, 20]));
    }
}
