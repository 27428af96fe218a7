//! A source of events that arrive already in person order, identity resolved: what a store
//! that is not this process returns for `... ORDER BY person, time, arrival` (a ClickHouse
//! cluster keeps each person's events on one shard, sorted so). The analyses read it through
//! the same seam as the embedded engine, so they give the same answers over it.
//!
//! Rows are kept in the order they came, so a person's events are one contiguous run and a scan
//! needs no index: a named scan filters each person's run.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::cohort::MemberIds;
use crate::core::metric::scan::AggregatePushdown;
use crate::core::model::{Event, Micros, Value};
use crate::core::store::props::RowProps;
use crate::core::store::source::{EventSource, ManualValues, Numbers, PersonEvents, Rows, Scan, Strings};
use crate::core::store::table::{EventTable, Interner, NONE, ValueRef};
use crate::core::store::trait_groups::TraitGroups;
use crate::error::{Error, Result};

/// Fewer rows than this are scanned in one part.
const MIN_ROWS_PER_PART: usize = 100_000;

#[derive(Debug, Default)]
pub struct PersonBatch {
    /// Dictionaries, properties and event ids of the rows; its people are the batch's people
    /// (canonical only: there are no aliases left to apply).
    table: EventTable,
    /// Person p's rows start at `starts[p]` and end where the next person's start (the last
    /// person's at the end).
    starts: Vec<u32>,
    /// Rows in order, as the `rows` of a whole-person scan.
    row_ids: Vec<u32>,
    /// Per row: its time, plain (the table packs them), so a scan passes slices of it.
    times: Vec<Micros>,
    traits: HashMap<u32, Vec<(String, Value)>>,
    manual: HashMap<String, ManualValues>,
    /// The person whose rows are being added.
    current: Option<u32>,
    /// For a `split_parts` test: scan in this many parts whatever the size.
    parts: Option<usize>,
    /// Where event aggregates are computed instead of over the rows (`set_pushdown`).
    pushdown: Option<Pushdown>,
    /// Cohorts whose members a remote engine counted (`set_counted_cohort`).
    counted_cohorts: HashMap<String, Arc<MemberIds>>,
}

/// `AggregatePushdown` for a batch's `Debug`.
#[derive(Clone)]
struct Pushdown(Arc<dyn AggregatePushdown>);

impl std::fmt::Debug for Pushdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pushdown")
    }
}

impl PersonBatch {
    /// Starts the next person: a user id, or an anonymous id no user claimed. Their events
    /// follow, in time order; a person comes once.
    pub fn add_person(&mut self, id: &str, is_user: bool, traits: Vec<(String, Value)>) -> Result<()> {
        let known = if is_user { self.table.find_user(id) } else { self.table.find_anonymous(id) };
        if known.is_some() {
            return Err(Error::Internal(format!("person {id:?} came twice in a person-ordered stream")));
        }
        let person = if is_user { self.table.user_person(id) } else { self.table.anonymous_person(id) };
        debug_assert_eq!(person as usize, self.starts.len(), "people are numbered as they come");
        self.starts.push(self.table.len() as u32);
        if !traits.is_empty() {
            self.traits.insert(person, traits);
        }
        self.current = Some(person);
        Ok(())
    }

    /// The person `id` (a user id, or an anonymous id), added without traits when new; for
    /// batches that hold people but no events.
    pub fn person(&mut self, id: &str, is_user: bool) -> Result<u32> {
        let known = if is_user { self.table.find_user(id) } else { self.table.find_anonymous(id) };
        match known {
            Some(person) => Ok(person),
            None => {
                self.add_person(id, is_user, Vec::new())?;
                Ok(self.starts.len() as u32 - 1)
            }
        }
    }

    /// Answers event aggregates with `pushdown` (a batch read without the events they need).
    pub fn set_pushdown(&mut self, pushdown: Arc<dyn AggregatePushdown>) {
        self.pushdown = Some(Pushdown(pushdown));
    }

    /// Gives the members of cohort `cohort_id`, counted where the events are, to the queries
    /// over this batch (which then need not hold the events the cohort's conditions read).
    pub fn set_counted_cohort(&mut self, cohort_id: &str, members: Arc<MemberIds>) {
        self.counted_cohorts.insert(cohort_id.to_owned(), members);
    }

    /// Adds an event of the current person; `event`'s user and anonymous ids are replaced by
    /// the person's.
    pub fn add_event(&mut self, event: Event) -> Result<()> {
        let properties = event.properties.iter().map(|(key, value)| (key.as_str(), ValueRef::from(value)));
        self.add_row(&event.name, &event.event_id, event.timestamp, properties)
    }

    /// `add_event` with the event's parts borrowed, for a reader that fills the batch from
    /// rows it decoded itself.
    pub fn add_row<'a>(
        &mut self,
        name: &str,
        event_id: &str,
        timestamp: Micros,
        properties: impl IntoIterator<Item = (&'a str, ValueRef<'a>)>,
    ) -> Result<()> {
        let person = self.current.ok_or_else(|| Error::Internal("an event before any person".into()))?;
        let first = self.starts[person as usize] as usize;
        if self.table.len() > first && self.times.last().is_some_and(|&last| last > timestamp) {
            return Err(Error::Internal(format!("event {event_id:?} out of time order")));
        }
        let anonymous = if self.table.is_user()[person as usize] { NONE } else { person };
        self.row_ids.push(self.table.len() as u32);
        self.times.push(timestamp);
        self.table.push_row(person, anonymous, name, event_id, timestamp, properties);
        Ok(())
    }

    /// Users with events or traits.
    pub fn user_count(&self) -> u64 {
        let is_user = self.table.is_user();
        (0..is_user.len() as u32).filter(|&p| is_user[p as usize] && self.known(p)).count() as u64
    }

    /// A person's traits, sorted by name.
    pub fn traits_of(&self, person: u32) -> Vec<(String, Value)> {
        let mut traits = self.traits.get(&person).cloned().unwrap_or_default();
        traits.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        traits
    }

    /// Stores MANUAL values of metric `key`.
    pub fn add_manual(&mut self, key: &str, values: ManualValues) {
        self.manual.insert(key.to_owned(), values);
    }

    /// Scans in `parts` parts whatever the size (tests use it to exercise merging parts).
    pub fn split_parts(&mut self, parts: usize) {
        self.parts = Some(parts.max(1));
    }

    fn span(&self, person: usize) -> std::ops::Range<usize> {
        self.starts[person] as usize..self.starts.get(person + 1).map_or(self.table.len(), |&s| s as usize)
    }

    /// Visits people `people` with the scan's events.
    fn visit_people(
        &self,
        scan: Scan<'_>,
        people: std::ops::Range<usize>,
        visit: &mut dyn FnMut(u32, PersonEvents<'_>),
    ) {
        let (times, names) = (&self.times, self.table.name());
        let mut picked: (Vec<u32>, Vec<Micros>, Vec<u32>) = Default::default();
        for person in people {
            let span = self.span(person);
            let events = match scan.rows {
                Rows::All => PersonEvents {
                    rows: &self.row_ids[span.clone()],
                    times: &times[span.clone()],
                    names: &names[span],
                    indexed_at: None,
                    positions: &[],
                },
                Rows::Named(wanted) => {
                    picked.0.clear();
                    picked.1.clear();
                    picked.2.clear();
                    for row in span.filter(|&row| wanted.contains(&names[row])) {
                        picked.0.push(row as u32);
                        picked.1.push(times[row]);
                        picked.2.push(names[row]);
                    }
                    PersonEvents {
                        rows: &picked.0,
                        times: &picked.1,
                        names: &picked.2,
                        indexed_at: None,
                        positions: &[],
                    }
                }
            };
            // The scan's time range is not applied: the store already read only that range,
            // and a source may return more (so the seam test, comparing this with the embedded
            // engine, which trims, finds an analysis that asks for too narrow a range).
            if !events.is_empty() {
                visit(person as u32, events);
            }
        }
    }
}

impl EventSource for PersonBatch {
    fn names(&self) -> &Interner {
        self.table.names()
    }

    fn keys(&self) -> &Interner {
        self.table.keys()
    }

    fn strings(&self) -> &Interner {
        self.table.strings()
    }

    fn canonical(&self) -> &[u32] {
        self.table.canonical()
    }

    fn person_name(&self, person: u32) -> &str {
        self.table.person_name(person)
    }

    fn find_person(&self, id: &str) -> Option<u32> {
        self.table.find_user(id).or_else(|| self.table.find_anonymous(id))
    }

    fn is_user(&self, person: u32) -> bool {
        self.table.is_user()[person as usize]
    }

    fn known(&self, person: u32) -> bool {
        !self.span(person as usize).is_empty() || self.traits.contains_key(&person)
    }

    fn row_count(&self) -> usize {
        self.table.len()
    }

    fn row_time(&self, row: usize) -> Micros {
        self.times[row]
    }

    fn row_name(&self, row: usize) -> u32 {
        self.table.name()[row]
    }

    fn row_props(&self, row: usize) -> RowProps<'_> {
        self.table.row_props(row)
    }

    fn row_event_id(&self, row: usize) -> std::borrow::Cow<'_, str> {
        self.table.row_event_id(row)
    }

    fn trait_values(&self, name: &str) -> Vec<(u32, Value)> {
        let mut values: Vec<(u32, Value)> = self
            .traits
            .iter()
            .filter_map(|(&person, traits)| Some((person, traits.iter().find(|(n, _)| n == name)?.1.clone())))
            .collect();
        values.sort_unstable_by_key(|v| v.0);
        values
    }

    fn trait_groups(&self, name: &str) -> Arc<TraitGroups> {
        Arc::new(TraitGroups::of_values(self.canonical(), self.trait_values(name)))
    }

    fn manual(&self, key: &str) -> Option<&ManualValues> {
        self.manual.get(key)
    }

    fn fold_parts<S: Send>(
        &self,
        scan: Scan<'_>,
        init: impl Fn() -> S + Sync,
        visit: impl Fn(&mut S, u32, PersonEvents<'_>) + Sync,
    ) -> Vec<S> {
        let people = self.table.canonical().len();
        let wanted = self.parts.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
            cores.min(self.table.len() / MIN_ROWS_PER_PART).max(1)
        });
        let parts = wanted.clamp(1, people.max(1));
        crate::core::store::source::run_parts(parts, |k| {
            let mut state = init();
            let range = k * people / parts..(k + 1) * people / parts;
            self.visit_people(scan, range, &mut |person, events| visit(&mut state, person, events));
            state
        })
    }

    fn for_each(&self, scan: Scan<'_>, mut visit: impl FnMut(u32, PersonEvents<'_>)) {
        self.visit_people(scan, 0..self.table.canonical().len(), &mut visit)
    }

    fn numbers(&self, _name: u32, _key: u32) -> Option<Numbers> {
        None
    }

    fn string_ids(&self, _name: u32, _key: u32) -> Option<Strings> {
        None
    }

    fn pushdown(&self) -> Option<&dyn AggregatePushdown> {
        self.pushdown.as_ref().map(|p| p.0.as_ref())
    }

    fn counted_cohort(&self, cohort_id: &str) -> Option<&MemberIds> {
        self.counted_cohorts.get(cohort_id).map(Arc::as_ref)
    }
}
