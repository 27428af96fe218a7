//! Events kept by another engine (the ClickHouse backend, `crate::clickhouse`): what the
//! engine asks of it instead of its own table. Writes return when the other engine holds them
//! (the ack point); reads come back as a `PersonBatch`, which the analyses read through the
//! query seam like the embedded table. Calls block: the engine makes them off the executor.

use crate::core::filter::Filter;
use crate::core::model::{Event, Micros, UserUpdate, Value};
use crate::core::store::person_batch::PersonBatch;
use crate::error::Result;

/// What a read needs: the events of some names (all when `None`) in `[from, to)`, of one user
/// (with the anonymous ids credited to them) or of everyone. A batch read so holds only those
/// events: a cohort condition or a STRICT funnel evaluated over it would see only them, so a
/// query with either reads everything.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub names: Option<Vec<String>>,
    pub from: Micros,
    pub to: Micros,
    /// Only this user's events (and those credited to them); `None`: everyone's.
    pub user: Option<String>,
    /// With every user's traits (false: no traits, for a read that looks at none).
    pub traits: bool,
}

/// A project's events in numbers, as a read of them would count them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventStats {
    /// (name, events), by name.
    pub by_name: Vec<(String, u64)>,
    /// The earliest and latest time, if any.
    pub span: Option<(Micros, Micros)>,
    /// Users with events or traits.
    pub users: u64,
}

impl Fetch {
    pub fn everything() -> Fetch {
        Fetch { names: None, from: Micros::MIN, to: Micros::MAX, user: None, traits: true }
    }

    pub fn of_user(user_id: &str) -> Fetch {
        Fetch { user: Some(user_id.to_owned()), ..Fetch::everything() }
    }
}

/// An event aggregate computed where the events are: the events of one name in
/// `[from, to)` that pass `filters` (event properties only) and, with `value_property`, carry
/// a number there, summed up per person, bucket and breakdown value. The people's own
/// conditions (traits, cohorts) and the ranking of groups are left to the caller, which knows
/// them; what comes back is small (one row per person) and exact.
#[derive(Debug, Clone)]
pub struct AggregateRequest {
    pub name: String,
    pub from: Micros,
    pub to: Micros,
    pub filters: Vec<Filter>,
    pub value_property: Option<String>,
    /// Group by this event property's value too.
    pub breakdown_property: Option<String>,
    /// Bucket b holds times in `[bounds[b], bounds[b + 1])`.
    pub bounds: Vec<Micros>,
    /// Return every user's traits as well (a trait filter or breakdown reads them).
    pub with_traits: bool,
    /// Which of a cell's values the caller reads; the others may come back as their defaults
    /// (0, and ±infinity for the minimum and maximum).
    pub values: CellValues,
}

/// The values of partial cells an aggregate reads (a distinct count reads none: a cell says
/// the person had an event there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CellValues {
    pub count: bool,
    pub sum: bool,
    pub min: bool,
    pub max: bool,
}

/// What one bucket and breakdown value holds of a person's matching events.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialCell {
    pub bucket: u32,
    /// The breakdown property's value (`Value::Null` when missing or null, or without one).
    pub group: Value,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

/// A person's partial cells: the user id, or an anonymous id no user claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonCells {
    pub id: String,
    pub is_user: bool,
    pub cells: Vec<PartialCell>,
}

/// What an `AggregateRequest` returns: the people with matching events and, when asked, every
/// user's traits (by user id).
#[derive(Debug, Default)]
pub struct Aggregated {
    pub people: Vec<PersonCells>,
    pub traits: Vec<(String, Vec<(String, Value)>)>,
}

/// A cohort's behavioural conditions counted where the events are (`cohort::count_request`):
/// per person, how many events each condition counts. Each id counts once, as its earliest
/// copy, as a read keeps it. A condition's trait filters and the cohort's trait conditions are
/// left to the caller, which gets the traits.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortCountRequest {
    /// In `cohort::behavioural_conditions` order.
    pub conditions: Vec<CountedEvents>,
    /// Every person with any event at or after `not_before` too, counted or not: a cohort
    /// that people without the counted events may pass (a "did not" condition) needs them.
    pub everyone: bool,
    /// Return every user's traits as well.
    pub with_traits: bool,
    /// Where the project's retention starts: no event before it counts.
    pub not_before: Micros,
}

/// The events one behavioural condition counts: of one name, in `[from, to)`, passing
/// `filters` (event properties only).
#[derive(Debug, Clone, PartialEq)]
pub struct CountedEvents {
    pub name: String,
    pub from: Micros,
    pub to: Micros,
    pub filters: Vec<Filter>,
}

/// A person's counts, one per condition (empty: none counted; a person `everyone` added).
#[derive(Debug, Clone, PartialEq)]
pub struct PersonCounts {
    pub id: String,
    pub is_user: bool,
    pub counts: Vec<u64>,
}

/// What a `CohortCountRequest` returns: the people with events it counts (and with
/// `everyone`, all people with events), and every user's traits when asked.
#[derive(Debug, Default)]
pub struct CohortCounts {
    pub people: Vec<PersonCounts>,
    pub traits: Vec<(String, Vec<(String, Value)>)>,
}

/// What `RemoteEvents::rewrite_records` asks: given every record with its arrival number, the
/// new values of those to change.
pub type RecordRewrite<'a> = dyn FnMut(&[(u64, &[u8])]) -> Result<Vec<(u64, crate::storage::Encoded)>> + 'a;

/// Events, traits and aliases on another engine. Every write is numbered by the store itself
/// (its order decides ties in time, the latest alias and what a deletion covers).
pub trait RemoteEvents: Send + Sync {
    /// Stores the events whose ids the project has not stored yet (the first of an id
    /// repeated in the batch wins) and says which were stored. Returns once they are durable.
    /// Batches sharing an id on one node are stored one after the other, in the order they
    /// hold their ids: `held` is called once they are held, before the store.
    fn store_events(&self, project: &str, events: &[Event], held: &mut dyn FnMut()) -> Result<Vec<bool>>;
    /// Which of `ids` the project has stored.
    fn stored_ids(&self, project: &str, ids: &[String]) -> Result<std::collections::HashSet<String>>;
    /// Trait updates, applied in order.
    fn store_user_updates(&self, project: &str, updates: &[UserUpdate]) -> Result<()>;
    /// Credits `anonymous_id`'s events (past and future) to `user_id`.
    fn store_alias(&self, project: &str, anonymous_id: &str, user_id: &str) -> Result<()>;
    /// Erases a user: at once for every read, and from the engine's files in the background.
    /// Returns the anonymous ids it unlinked (those credited to the user then).
    fn delete_user(&self, project: &str, user_id: &str) -> Result<Vec<String>>;
    /// Removes a project's events from before `cutoff` (its retention period).
    fn expire(&self, project: &str, cutoff: Micros) -> Result<()>;
    /// What `fetch` asks for, with every user's traits, in person order.
    fn person_batch(&self, project: &str, fetch: &Fetch) -> Result<PersonBatch>;
    /// The earliest and latest time of the events `fetch` asks for, if any.
    fn time_span(&self, project: &str, fetch: &Fetch) -> Result<Option<(Micros, Micros)>>;
    /// Per person with any of the events `fetch` asks for: (id, is a user, the time of their
    /// first), in no particular order.
    fn first_seen(&self, project: &str, fetch: &Fetch) -> Result<Vec<(String, bool, Micros)>>;
    /// What GetProjectStats tells of the events `fetch` asks for.
    fn event_stats(&self, project: &str, fetch: &Fetch) -> Result<EventStats>;
    /// An event aggregate's partial cells, per person (`AggregateRequest`).
    fn aggregate(&self, project: &str, request: &AggregateRequest) -> Result<Aggregated>;
    /// A cohort's behavioural conditions counted per person (`CohortCountRequest`).
    fn cohort_counts(&self, project: &str, request: &CohortCountRequest) -> Result<CohortCounts>;
    /// The events `fetch` asks for as they were sent (user and anonymous ids), each with its
    /// arrival number, in no particular order.
    fn events_as_sent(&self, project: &str, fetch: &Fetch) -> Result<Vec<(u64, Event)>>;
    /// The anonymous ids whose events count for `user_id` now.
    fn anonymous_ids(&self, project: &str, user_id: &str) -> Result<Vec<String>>;
    /// An id no other call on any node gets (for quarantine entries), from the write numbers.
    fn next_id(&self) -> u64;
    /// Shows `rewrite` every stored record (what `Storage::replay` visits), each with its
    /// arrival number, in order. The new values it returns (by arrival number) replace the old
    /// ones in the engine's files, in the background (`settle` waits). No record is added or
    /// removed and `generation` does not move, so nodes keep the state they built from the old
    /// values: a new value must rebuild the same state. Returns how many it replaced.
    fn rewrite_records(&self, rewrite: &mut RecordRewrite<'_>) -> Result<usize>;
    /// A number that moves whenever a definition or another record stored beside the events
    /// changes, on any node: caches of them are rebuilt when it moves.
    fn generation(&self) -> Result<u64>;
    /// Waits up to `timeout` for background removals (deletions, expiry) to reach the files;
    /// true when none is left.
    fn settle(&self, timeout: std::time::Duration) -> Result<bool>;
}
