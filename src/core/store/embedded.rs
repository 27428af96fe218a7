//! The embedded engine behind the query seam: a project's columnar table, read person by
//! person through its cached `PersonOrder` (built on the first scan that needs it).

use std::sync::{Arc, OnceLock};

use crate::core::model::{Micros, Value};
use crate::core::store::ProjectData;
use crate::core::store::person_order::{PersonOrder, query_threads};
use crate::core::store::source::{EventSource, ManualValues, Numbers, PersonEvents, Scan, Strings, trim};
use crate::core::store::table::{Interner, Prop};
use crate::core::store::trait_groups::TraitGroups;

/// One project's data as an `EventSource`, for as long as the caller holds it (under the
/// project's read lock).
pub struct Embedded<'a> {
    data: &'a ProjectData,
    order: OnceLock<Arc<PersonOrder>>,
}

impl ProjectData {
    /// This data as the analyses read it.
    pub fn source(&self) -> Embedded<'_> {
        Embedded { data: self, order: OnceLock::new() }
    }
}

impl Embedded<'_> {
    /// The data read.
    pub fn data(&self) -> &ProjectData {
        self.data
    }

    fn order(&self) -> &PersonOrder {
        self.order.get_or_init(|| self.data.person_order.get(&self.data.table))
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
        self.data.table.len()
    }

    fn row_time(&self, row: usize) -> Micros {
        self.data.table.time_of(row)
    }

    fn row_name(&self, row: usize) -> u32 {
        self.data.table.name()[row]
    }

    fn row_props(&self, row: usize) -> &[Prop] {
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
        self.order().fold_parts_named(table, query_threads(table), scan.rows, init, |state, person, events| {
            if let Some(events) = trim(events, scan.from, scan.to) {
                visit(state, person, events);
            }
        })
    }

    fn for_each(&self, scan: Scan<'_>, mut visit: impl FnMut(u32, PersonEvents<'_>)) {
        self.order().for_each_named(&self.data.table, scan.rows, |person, events| {
            if let Some(events) = trim(events, scan.from, scan.to) {
                visit(person, events);
            }
        })
    }

    fn numbers(&self, name: u32, key: u32) -> Option<Numbers> {
        Some(self.order().numbers(&self.data.table, name, key))
    }

    fn string_ids(&self, name: u32, key: u32) -> Option<Strings> {
        Some(self.order().strings(&self.data.table, name, key))
    }
}
