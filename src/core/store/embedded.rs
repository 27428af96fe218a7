//! The embedded engine behind the query seam: a project's columnar table, read person by
//! person through its cached `PersonOrder` (built on the first scan that needs it), or, while
//! that order is being built, through an order of only the names a query scans.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::core::model::{Micros, Value};
use crate::core::store::ProjectData;
use crate::core::store::person_order::{PersonOrder, Rows, query_threads};
use crate::core::store::props::RowProps;
use crate::core::store::source::{EventSource, ManualValues, Numbers, PersonEvents, Scan, Strings, trim};
use crate::core::store::table::Interner;
use crate::core::store::trait_groups::TraitGroups;

/// One project's data as an `EventSource`, for as long as the caller holds it (under the
/// project's read lock).
pub struct Embedded<'a> {
    data: &'a ProjectData,
    /// The order of all rows, once a scan needed it.
    order: OnceLock<Arc<PersonOrder>>,
    /// The order of some names this query's named scans read, when the first one came while
    /// the order of all rows was being built. Later named scans and `numbers` of this query
    /// read it (widened at its state when they need more names), so an event's position in its
    /// name's index means the same in all of them.
    named: Mutex<Option<Arc<PersonOrder>>>,
}

impl ProjectData {
    /// This data as the analyses read it.
    pub fn source(&self) -> Embedded<'_> {
        Embedded { data: self, order: OnceLock::new(), named: Mutex::new(None) }
    }
}

impl Embedded<'_> {
    /// The data read.
    pub fn data(&self) -> &ProjectData {
        self.data
    }

    fn order(&self) -> &Arc<PersonOrder> {
        self.order.get_or_init(|| self.data.person_order.get(&self.data.table))
    }

    /// The order a scan of `rows` reads (see `named`).
    fn order_for(&self, rows: Rows<'_>) -> Arc<PersonOrder> {
        let Rows::Named(names) = rows else { return self.order().clone() };
        let (cache, table) = (&self.data.person_order, &self.data.table);
        let mut named = self.named.lock();
        if let Some(order) = named.as_mut() {
            if !order.holds(names) {
                let wider = cache.widened(table, order, names);
                *order = wider;
            }
            return order.clone();
        }
        if let Some(order) = self.order.get() {
            return order.clone();
        }
        let order = cache.for_names(table, names);
        if order.is_whole() {
            let _ = self.order.set(order.clone());
        } else {
            *named = Some(order.clone());
        }
        order
    }
}

impl EventSource for Embedded<'_> {
    fn names(&self) -> &Interner {
        self.data.table.names()
    }

    fn keys(&self) -> &Interner {
        self.data.table.keys()
    }

    fn strings(&self) -> &Interner {
        self.data.table.strings()
    }

    fn canonical(&self) -> &[u32] {
        self.data.table.canonical()
    }

    fn person_name(&self, person: u32) -> &str {
        self.data.table.person_name(person)
    }

    fn is_user(&self, person: u32) -> bool {
        self.data.table.is_user()[person as usize]
    }

    fn find_person(&self, id: &str) -> Option<u32> {
        self.data.table.find_user(id).or_else(|| self.data.table.find_anonymous(id))
    }

    fn known(&self, person: u32) -> bool {
        let table = &self.data.table;
        table.has_rows(person)
            || self.data.traits.contains(person)
            || table.aliases().get(&person).is_some_and(|anons| anons.iter().any(|&a| table.has_rows(a)))
    }

    fn row_count(&self) -> usize {
        self.data.table.live_rows()
    }

    fn row_time(&self, row: usize) -> Micros {
        self.data.table.time_of(row)
    }

    fn row_name(&self, row: usize) -> u32 {
        self.data.table.name()[row]
    }

    fn row_props(&self, row: usize) -> RowProps<'_> {
        self.data.table.row_props(row)
    }

    fn row_event_id(&self, row: usize) -> std::borrow::Cow<'_, str> {
        self.data.table.row_event_id(row)
    }

    fn trait_values(&self, name: &str) -> Vec<(u32, Value)> {
        self.data.traits.values_of(name).collect()
    }

    fn trait_groups(&self, name: &str) -> Arc<TraitGroups> {
        self.data.trait_groups.get(self.data, name)
    }

    fn manual(&self, key: &str) -> Option<&ManualValues> {
        self.data.manual.get(key)
    }

    fn fold_parts<S: Send>(
        &self,
        scan: Scan<'_>,
        init: impl Fn() -> S + Sync,
        visit: impl Fn(&mut S, u32, PersonEvents<'_>) + Sync,
    ) -> Vec<S> {
        let table = &self.data.table;
        self.order_for(scan.rows).fold_parts_named(
            table,
            query_threads(table),
            scan.rows,
            init,
            |state, person, events| {
                if let Some(events) = trim(events, scan.from, scan.to) {
                    visit(state, person, events);
                }
            },
        )
    }

    fn for_each(&self, scan: Scan<'_>, mut visit: impl FnMut(u32, PersonEvents<'_>)) {
        self.order_for(scan.rows).for_each_named(&self.data.table, scan.rows, |person, events| {
            if let Some(events) = trim(events, scan.from, scan.to) {
                visit(person, events);
            }
        })
    }

    fn numbers(&self, name: u32, key: u32) -> Option<Numbers> {
        Some(self.order_for(Rows::Named(&[name])).numbers(&self.data.table, name, key))
    }

    fn string_ids(&self, name: u32, key: u32) -> Option<Strings> {
        Some(self.order_for(Rows::Named(&[name])).strings(&self.data.table, name, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Event;

    /// Visits of a named scan of `names` (their numbers columns asked for first, as a metric
    /// does) or, with `None`, of a full scan: (person, row, the numbers column's value at the
    /// event's position, if known, and the row's own value).
    fn values(source: &Embedded<'_>, names: Option<&[u32]>, amount: u32) -> Vec<(u32, u32, Option<f64>, Option<f64>)> {
        let mut seen = Vec::new();
        let columns: Vec<Option<Numbers>> =
            (0..3).map(|name| names?.contains(&name).then(|| source.numbers(name, amount))?).collect();
        let scan = names.map_or(Scan::all(), Scan::named);
        source.for_each(scan, |person, events| {
            for i in 0..events.len() {
                let row = events.rows[i];
                let column =
                    events.position(i).and_then(|at| columns[events.names[i] as usize].as_ref().map(|c| c[at]));
                let own = crate::core::filter::row_number(source.row_props(row as usize), amount);
                seen.push((person, row, column.flatten(), own));
            }
        });
        seen
    }

    /// A query that comes while the whole order is being built reads an order of its names, and
    /// keeps reading it (widened) for its later named scans and numbers: an event's position
    /// finds its own value in every numbers column the query gets, before and after it also
    /// needed the whole order.
    #[test]
    fn a_query_reads_one_order_of_its_names_while_the_whole_one_is_built() {
        let mut data = ProjectData::default();
        for i in 0..240u32 {
            data.table.push(&Event {
                event_id: format!("e{i}"),
                name: ["a", "b", "c"][(i * 7 % 3) as usize].into(),
                user_id: if i % 5 == 0 { String::new() } else { format!("u{}", i % 17) },
                anonymous_id: if i % 5 == 0 { format!("x{}", i % 4) } else { String::new() },
                timestamp: i64::from((i * 37) % 101),
                properties: vec![("amount".into(), Value::Number(f64::from(i)))],
            });
        }
        let amount = data.table.keys().get("amount").expect("interned");
        let (a, b, c) = (0u32, 1u32, 2u32);
        // The whole order, built before an alias moved x1's events to u3: it still serves,
        // moving them at read time, and its positions differ from an order built after.
        let before = data.person_order.get(&data.table);
        data.table.alias("x1", "u3");
        assert!(before.serves(&data.table));
        let building = data.person_order.hold_building();
        let source = data.source();
        let first = values(&source, Some(&[a]), amount);
        assert_eq!(first.len(), 80);
        let wider = values(&source, Some(&[a, b]), amount);
        assert_eq!(wider.len(), 160);
        let named = source.named.lock().clone().expect("an order of some names");
        assert!(!named.is_whole() && named.holds(&[a, b]) && !named.holds(&[c]));
        drop(building);
        let all = values(&source, None, amount);
        assert_eq!(all.len(), 240);
        let last = values(&source, Some(&[c, a]), amount);
        assert_eq!(last.len(), 160);
        for (person, row, column, own) in first.iter().chain(&wider).chain(&last) {
            assert_eq!(column, own, "person {person}, row {row}");
            assert!(column.is_some() || own.is_none(), "a named scan's positions are known");
        }
        // The whole order (for the full scan) and the named one give the same events.
        let mut by_whole: Vec<_> =
            all.iter().filter(|v| [c, a].contains(&data.table.name()[v.1 as usize])).map(|v| (v.0, v.1)).collect();
        let mut by_named: Vec<_> = last.iter().map(|v| (v.0, v.1)).collect();
        by_whole.sort();
        by_named.sort();
        assert_eq!(by_whole, by_named);
        assert!(source.order.get().is_some_and(|order| order.is_whole()));
    }
}
