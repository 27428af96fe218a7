//! The query seam: everything an analysis reads of a project's events and people, and nothing
//! else. Metrics, funnels, retention, cohorts, experiments, attribution and revenue take an
//! `EventSource`; they never see how or where the events are stored.
//!
//! The reads are the ones an analysis of behaviour needs, and an engine that is not this
//! process can answer:
//! - **Person-ordered scans** (`fold_parts`, `for_each`): each person's events in time order
//!   (ties by arrival), with only the event names and the time range the `Scan` asks for,
//!   split into parts of whole people that run in parallel. A distributed store answers with
//!   `... WHERE name IN (…) AND time in range ORDER BY person, time` from every shard, since a
//!   person's events sit on one shard.
//! - **Row lookups** for a row handle a scan gave: its time, event name, properties and event id.
//! - **Identity**: person ids, each mapped to the person its events count for (an anonymous
//!   id aliased to a user counts for the user), and the names people are known by.
//! - **Traits and MANUAL values**, by name.
//!
//! Ids (event names, property keys, string values, people, rows) are the source's own: an
//! analysis interns a query's strings through the source's dictionaries and resolves ids back
//! the same way, so two sources over the same events give the same answers with different ids.
//!
//! Implementations: `Embedded` (the embedded engine's table and person order) and
//! `PersonBatch` (events that arrive already person-ordered, as an external engine streams
//! them). `core/seam_tests.rs` requires equal answers through both; there `PersonBatch` returns
//! events outside a scan's range, so an analysis that asks for too narrow a range differs.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::core::model::{ManualValue, Micros, Value};
use crate::core::store::props::RowProps;
use crate::core::store::table::Interner;
use crate::core::store::trait_groups::TraitGroups;

pub use crate::core::store::person_order::{Numbers, PersonEvents, Rows, Strings};

/// What a scan reads: the rows of some event names (or all), within `[from, to)`.
///
/// A source may leave out every event outside the range (and then every person left with none)
/// and may also return more: an analysis still checks the times it relies on, and asks for the
/// widest range it reads (a funnel's conversion window past its end, an attribution's lookback
/// before its start, retention's return periods).
#[derive(Debug, Clone, Copy)]
pub struct Scan<'a> {
    pub rows: Rows<'a>,
    pub from: Micros,
    pub to: Micros,
}

impl<'a> Scan<'a> {
    /// Every event of every person.
    pub fn all() -> Scan<'static> {
        Scan { rows: Rows::All, from: Micros::MIN, to: Micros::MAX }
    }

    /// Only the events of `names` (ids of this source; unknown ids or `NONE` select nothing).
    pub fn named(names: &'a [u32]) -> Scan<'a> {
        Scan { rows: Rows::Named(names), from: Micros::MIN, to: Micros::MAX }
    }

    /// Only events in `[from, to)`.
    pub fn within(self, from: Micros, to: Micros) -> Scan<'a> {
        Scan { from, to, ..self }
    }
}

/// MANUAL metric values of one metric, keyed by (timestamp, dimensions).
pub type ManualValues = BTreeMap<(Micros, String), ManualValue>;

/// One project's events and people at one moment, as the analyses read them.
pub trait EventSource: Sync {
    /// Event names.
    fn names(&self) -> &Interner;
    /// Event property keys.
    fn keys(&self) -> &Interner;
    /// String property values.
    fn strings(&self) -> &Interner;

    /// Per person id: the person whose events these count as (itself, or the user an
    /// anonymous id is aliased to). Person ids are `0..canonical().len()`.
    fn canonical(&self) -> &[u32];
    /// The id a person is known by outside: a user id, or an anonymous id.
    fn person_name(&self, person: u32) -> &str;
    /// The person a user id names, or else the visitor an anonymous id names.
    fn find_person(&self, id: &str) -> Option<u32>;
    /// Whether a person is known by a user id (else by an anonymous id).
    fn is_user(&self, person: u32) -> bool;
    /// Whether a canonical person has events (their own or an aliased id's) or traits: a
    /// deleted user can stay known by id with nothing left, and then counts nowhere.
    fn known(&self, person: u32) -> bool;

    /// Rows in the source, a size hint for how to split a scan.
    fn row_count(&self) -> usize;
    fn row_time(&self, row: usize) -> Micros;
    fn row_name(&self, row: usize) -> u32;
    fn row_props(&self, row: usize) -> RowProps<'_>;
    /// A row's event id (decoded: ids are stored compressed, as nothing scans them).
    fn row_event_id(&self, row: usize) -> Cow<'_, str>;

    /// The value of trait `name` for every canonical person who has it.
    fn trait_values(&self, name: &str) -> Vec<(u32, Value)>;
    /// Trait `name`'s value per person id as a breakdown group.
    fn trait_groups(&self, name: &str) -> Arc<TraitGroups>;
    /// MANUAL values of metric `key`.
    fn manual(&self, key: &str) -> Option<&ManualValues>;

    /// Visits every person the scan selects, with their events in time order, split into
    /// contiguous parts of people that may run on several threads: each part folds into its
    /// own state from `init`, and the states come back in part order.
    fn fold_parts<S: Send>(
        &self,
        scan: Scan<'_>,
        init: impl Fn() -> S + Sync,
        visit: impl Fn(&mut S, u32, PersonEvents<'_>) + Sync,
    ) -> Vec<S>;

    /// Like `fold_parts` in one part, on the calling thread.
    fn for_each(&self, scan: Scan<'_>, visit: impl FnMut(u32, PersonEvents<'_>));

    /// Property `key`'s number per row of event `name`, indexed by `PersonEvents::position`,
    /// when the source keeps such columns (an accelerator: `None` means read `row_props`).
    fn numbers(&self, name: u32, key: u32) -> Option<Numbers>;
    /// Like `numbers`, a string property's id.
    fn string_ids(&self, name: u32, key: u32) -> Option<Strings>;
    /// Where event aggregates are computed instead of by scanning this source (a remote
    /// engine; see `metric::scan::pushable`).
    fn pushdown(&self) -> Option<&dyn crate::core::metric::scan::AggregatePushdown> {
        None
    }
    /// The members of cohort `cohort_id` as a remote engine counted them, when it did (then a
    /// source holds only the events its query reads, not those the cohort's conditions do).
    fn counted_cohort(&self, _cohort_id: &str) -> Option<&crate::core::cohort::MemberIds> {
        None
    }
}

/// `events` without the events outside `[from, to)` (they are in time order), or none when
/// nothing is left.
#[inline]
pub fn trim<'a>(events: PersonEvents<'a>, from: Micros, to: Micros) -> Option<PersonEvents<'a>> {
    let (&earliest, &latest) = (events.times.first()?, events.times.last()?);
    // Most people's events are all inside the range: no search.
    if earliest >= from && latest < to {
        return Some(events);
    }
    let first = events.times.partition_point(|&t| t < from);
    let end = first + events.times[first..].partition_point(|&t| t < to);
    if first == end {
        return None;
    }
    Some(PersonEvents {
        rows: &events.rows[first..end],
        times: &events.times[first..end],
        names: &events.names[first..end],
        indexed_at: events.indexed_at.map(|at| at + first),
        positions: if events.positions.is_empty() { &[] } else { &events.positions[first..end] },
    })
}

/// Runs parts `0..parts`, part 0 on the calling thread and the others on their own threads
/// (each under the caller's cancellation), and returns their results in part order.
pub fn run_parts<S: Send>(parts: usize, run: impl Fn(usize) -> S + Sync) -> Vec<S> {
    if parts <= 1 {
        return vec![run(0)];
    }
    let token = crate::core::cancel::current();
    std::thread::scope(|scope| {
        let token = token.as_ref();
        let run = &run;
        let handles: Vec<_> =
            (1..parts).map(|k| scope.spawn(move || crate::core::cancel::within(token, || run(k)))).collect();
        let mut states = vec![run(0)];
        // A panic in a part is a bug; re-raise it on the calling thread.
        states.extend(handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))));
        states
    })
}

/// The source a call reads: the embedded table, or a batch another engine returned.
pub enum AnySource<'a> {
    Embedded(crate::core::store::embedded::Embedded<'a>),
    Batch(Box<crate::core::store::person_batch::PersonBatch>),
}

macro_rules! delegate {
    ($self:ident, $source:ident => $call:expr) => {
        match $self {
            AnySource::Embedded($source) => $call,
            AnySource::Batch($source) => $call,
        }
    };
}

impl AnySource<'_> {
    /// The earliest and latest event time, if any event.
    pub fn time_span(&self) -> Option<(Micros, Micros)> {
        if let AnySource::Embedded(embedded) = self {
            let table = &embedded.data().table;
            return table.min_time().zip(table.max_time());
        }
        let times = (0..self.row_count()).map(|row| self.row_time(row));
        times.fold(None, |span, t| Some(span.map_or((t, t), |(lo, hi): (Micros, Micros)| (lo.min(t), hi.max(t)))))
    }

    /// Identified users with events or traits (a deleted user can stay interned with none).
    pub fn user_count(&self) -> u64 {
        match self {
            AnySource::Embedded(embedded) => {
                let is_user = embedded.data().table.is_user();
                (0..is_user.len() as u32).filter(|&p| is_user[p as usize] && embedded.known(p)).count() as u64
            }
            AnySource::Batch(batch) => batch.user_count(),
        }
    }

    /// Events per event name id.
    pub fn name_counts(&self) -> Vec<u64> {
        if let AnySource::Embedded(embedded) = self {
            return embedded.data().table.name_counts().to_vec();
        }
        let mut counts = vec![0u64; self.names().len()];
        for row in 0..self.row_count() {
            counts[self.row_name(row) as usize] += 1;
        }
        counts
    }
}

impl EventSource for AnySource<'_> {
    fn names(&self) -> &Interner {
        delegate!(self, s => s.names())
    }
    fn keys(&self) -> &Interner {
        delegate!(self, s => s.keys())
    }
    fn strings(&self) -> &Interner {
        delegate!(self, s => s.strings())
    }
    fn canonical(&self) -> &[u32] {
        delegate!(self, s => s.canonical())
    }
    fn person_name(&self, person: u32) -> &str {
        delegate!(self, s => s.person_name(person))
    }
    fn find_person(&self, id: &str) -> Option<u32> {
        delegate!(self, s => s.find_person(id))
    }
    fn is_user(&self, person: u32) -> bool {
        delegate!(self, s => s.is_user(person))
    }
    fn known(&self, person: u32) -> bool {
        delegate!(self, s => s.known(person))
    }
    fn row_count(&self) -> usize {
        delegate!(self, s => s.row_count())
    }
    fn row_time(&self, row: usize) -> Micros {
        delegate!(self, s => s.row_time(row))
    }
    fn row_name(&self, row: usize) -> u32 {
        delegate!(self, s => s.row_name(row))
    }
    fn row_props(&self, row: usize) -> RowProps<'_> {
        delegate!(self, s => s.row_props(row))
    }
    fn row_event_id(&self, row: usize) -> Cow<'_, str> {
        delegate!(self, s => s.row_event_id(row))
    }
    fn trait_values(&self, name: &str) -> Vec<(u32, Value)> {
        delegate!(self, s => s.trait_values(name))
    }
    fn trait_groups(&self, name: &str) -> Arc<TraitGroups> {
        delegate!(self, s => s.trait_groups(name))
    }
    fn manual(&self, key: &str) -> Option<&ManualValues> {
        delegate!(self, s => s.manual(key))
    }
    fn fold_parts<S: Send>(
        &self,
        scan: Scan<'_>,
        init: impl Fn() -> S + Sync,
        visit: impl Fn(&mut S, u32, PersonEvents<'_>) + Sync,
    ) -> Vec<S> {
        delegate!(self, s => s.fold_parts(scan, init, visit))
    }
    fn for_each(&self, scan: Scan<'_>, visit: impl FnMut(u32, PersonEvents<'_>)) {
        delegate!(self, s => s.for_each(scan, visit))
    }
    fn numbers(&self, name: u32, key: u32) -> Option<Numbers> {
        delegate!(self, s => s.numbers(name, key))
    }
    fn string_ids(&self, name: u32, key: u32) -> Option<Strings> {
        delegate!(self, s => s.string_ids(name, key))
    }
    fn pushdown(&self) -> Option<&dyn crate::core::metric::scan::AggregatePushdown> {
        delegate!(self, s => s.pushdown())
    }
    fn counted_cohort(&self, cohort_id: &str) -> Option<&crate::core::cohort::MemberIds> {
        delegate!(self, s => s.counted_cohort(cohort_id))
    }
}
