//! Per-event validation against the limits and the tracking plan: what a batch keeps,
//! quarantines or rejects, before anything is written.

use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasherDefault;

use crate::core::catalog::{self, validate_name};
use crate::core::model::{
    Enforcement, Event, EventType, MICROS_PER_SECOND, Micros, QuarantinedEvent, UserUpdate, Value,
};
use crate::error::{Error, Result};

use super::writer::IdHasher;

/// Configurable ingest limits (SPEC §3 defaults).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_batch_events: usize,
    pub max_event_bytes: usize,
    pub max_properties: usize,
    pub max_future_micros: Micros,
    /// Distinct event property keys a project may hold, and likewise distinct trait names.
    pub max_property_keys: usize,
}

impl Limits {
    /// A request carries at most `max_batch_events` items (events, users, exposures, values):
    /// more is RESOURCE_EXHAUSTED for the whole request, naming `field`.
    pub fn check_batch(&self, field: &str, items: usize) -> Result<()> {
        if items > self.max_batch_events {
            return Err(Error::exhausted(
                field,
                format!("{items} {field} in one request, at most {}", self.max_batch_events),
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_events: 5_000,
            max_event_bytes: 32 * 1024,
            max_properties: 256,
            max_future_micros: 3600 * MICROS_PER_SECOND,
            max_property_keys: DEFAULT_MAX_PROPERTY_KEYS,
        }
    }
}

/// The default of `Limits::max_property_keys`.
pub const DEFAULT_MAX_PROPERTY_KEYS: usize = 1_000_000;
/// The most `Limits::max_property_keys` may be: half the key space a stored property has
/// (`table::MAX_PROPERTY_KEYS`), so batches checked against the same count at once cannot
/// together run past it.
pub const MAX_PROPERTY_KEYS_LIMIT: usize = crate::core::store::table::MAX_PROPERTY_KEYS / 2;

pub const MAX_ID_BYTES: usize = 128;
pub const MAX_USER_ID_BYTES: usize = 256;

/// An event as received: decoding may already have failed (e.g. a NaN number), and the
/// encoded size is known only on the wire.
pub struct Incoming {
    pub event: Result<Event>,
    pub encoded_len: usize,
}

/// A per-item failure or warning in a batch reply.
#[derive(Debug)]
pub struct ItemError {
    pub index: u32,
    pub event_id: String,
    pub error: Error,
}

#[derive(Debug, Default)]
pub struct TrackOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    pub rejected: Vec<ItemError>,
    pub warnings: Vec<ItemError>,
}

pub fn validate_user_id(field: &str, id: &str) -> Result<()> {
    if id.len() > MAX_USER_ID_BYTES {
        return Err(Error::invalid(field, format!("{} bytes, at most {MAX_USER_ID_BYTES}", id.len())));
    }
    if id.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL"));
    }
    Ok(())
}

pub fn validate_properties(field: &str, properties: &[(String, Value)], limits: &Limits) -> Result<()> {
    if properties.len() > limits.max_properties {
        return Err(Error::invalid(
            field,
            format!("{} properties, at most {}", properties.len(), limits.max_properties),
        ));
    }
    for (key, value) in properties {
        validate_name("", key).map_err(|e| e.under(&format!("{field}.{key}")))?;
        if let Value::Number(n) = value
            && !n.is_finite()
        {
            return Err(Error::invalid(format!("{field}.{key}"), "number must be finite"));
        }
    }
    Ok(())
}

/// Checks one event against the limits; fills a missing event id with a UUIDv7.
/// Field names in errors are relative to the event (`name`, `properties.price`).
pub fn validate_event(event: &mut Event, encoded_len: usize, limits: &Limits, now: Micros) -> Result<()> {
    if encoded_len > limits.max_event_bytes {
        return Err(Error::invalid(
            "event",
            format!("{encoded_len} bytes encoded, at most {}", limits.max_event_bytes),
        ));
    }
    validate_name("name", &event.name)?;
    if event.event_id.len() > MAX_ID_BYTES {
        return Err(Error::invalid("event_id", format!("{} bytes, at most {MAX_ID_BYTES}", event.event_id.len())));
    }
    if event.user_id.is_empty() && event.anonymous_id.is_empty() {
        return Err(Error::invalid("user_id", "user_id or anonymous_id is required"));
    }
    validate_user_id("user_id", &event.user_id)?;
    validate_user_id("anonymous_id", &event.anonymous_id)?;
    if event.timestamp > now + limits.max_future_micros {
        return Err(Error::invalid(
            "timestamp",
            format!("more than {} s in the future", limits.max_future_micros / MICROS_PER_SECOND),
        ));
    }
    validate_properties("properties", &event.properties, limits)?;
    if event.event_id.is_empty() {
        event.event_id = uuid::Uuid::now_v7().to_string();
    }
    Ok(())
}

/// Events split by what happens to them, before deduplication.
#[derive(Default)]
pub struct Sorted {
    pub accepted: Vec<Event>,
    pub quarantined: Vec<QuarantinedEvent>,
    pub outcome: TrackOutcome,
}

/// What a project has already received, asked before the tracking plan judges an event: a
/// repeated id is a duplicate whatever its payload (SPEC §1, the first write wins).
pub struct Received<'a> {
    /// Whether an id belongs to a stored event. Asked only for events the plan would reject or
    /// quarantine: the writer dedupes the rest, concurrent batches included.
    pub stored: &'a dyn Fn(&str) -> bool,
    /// Whether an id belongs to an event kept in quarantine (received, not stored).
    pub quarantined: &'a dyn Fn(&str) -> bool,
    /// Whether the project holds a property key already, and how many it holds.
    pub key_known: &'a dyn Fn(&str) -> bool,
    pub keys: usize,
}

impl Received<'_> {
    /// Nothing received: every id and property key is new.
    pub const NOTHING: Received<'static> =
        Received { stored: &|_| false, quarantined: &|_| false, key_known: &|_| false, keys: 0 };
}

/// The property keys (or trait names) a batch adds to a project, within
/// `Limits::max_property_keys`.
pub struct KeyBudget<'a> {
    /// Whether the project holds a key already.
    known: &'a dyn Fn(&str) -> bool,
    /// How many it holds.
    held: usize,
    limit: usize,
    /// `property keys` or `trait names`, for messages.
    what: &'static str,
    added: HashSet<String>,
}

impl<'a> KeyBudget<'a> {
    pub fn new(known: &'a dyn Fn(&str) -> bool, held: usize, limit: usize, what: &'static str) -> KeyBudget<'a> {
        KeyBudget { known, held, limit, what, added: HashSet::new() }
    }

    /// Admits an item whose new keys (in `lists`, each under its field) fit, counting them as
    /// added; otherwise the error names the first key past the limit.
    pub fn admit(&mut self, lists: &[(&str, &[(String, Value)])]) -> Result<()> {
        let keys = || lists.iter().flat_map(|(field, list)| list.iter().map(move |(key, _)| (*field, key.as_str())));
        let is_new = |key: &str| !(self.known)(key) && !self.added.contains(key);
        // The common case, every key known, allocates nothing.
        if !keys().any(|(_, key)| is_new(key)) {
            return Ok(());
        }
        let new: HashSet<&str> = keys().map(|(_, key)| key).filter(|key| is_new(key)).collect();
        let held = self.held + self.added.len();
        if held + new.len() > self.limit {
            let (field, key) = keys().find(|(_, key)| new.contains(key)).unwrap_or_default();
            return Err(Error::exhausted(
                format!("{field}.{key}"),
                format!(
                    "a new key, and the project holds {held} distinct {}, at most {} (--max-property-keys)",
                    self.what, self.limit
                ),
            ));
        }
        self.added.extend(new.into_iter().map(str::to_owned));
        Ok(())
    }
}

/// Validates a batch and applies the project's enforcement to it. Duplicates are decided
/// first: an id repeated inside the batch, an id in quarantine and (for events the plan would
/// not accept) a stored id are counted in `duplicates`, never judged by the plan.
pub fn sort_batch(
    items: Vec<Incoming>,
    enforcement: Enforcement,
    plan: &BTreeMap<String, EventType>,
    limits: &Limits,
    now: Micros,
    retention_cutoff: Option<Micros>,
    received: &Received,
) -> Sorted {
    // Sized for the batch up front: growing them event by event rehashed and copied.
    let mut sorted = Sorted { accepted: Vec::with_capacity(items.len()), ..Sorted::default() };
    let mut batch_ids: HashSet<u128, BuildHasherDefault<IdHasher>> =
        HashSet::with_capacity_and_hasher(items.len(), BuildHasherDefault::default());
    let mut key_budget = KeyBudget::new(received.key_known, received.keys, limits.max_property_keys, "property keys");
    for (index, item) in items.into_iter().enumerate() {
        let index = index as u32;
        let mut event = match item.event {
            Ok(event) => event,
            Err(error) => {
                sorted.outcome.rejected.push(ItemError { index, event_id: String::new(), error: prefix(index, error) });
                continue;
            }
        };
        if let Err(error) = validate_event(&mut event, item.encoded_len, limits, now) {
            sorted.outcome.rejected.push(ItemError { index, event_id: event.event_id, error: prefix(index, error) });
            continue;
        }
        // The retention job would drop it at once; refusing it keeps answers stable and means
        // no id of an expired event needs keeping for dedupe.
        if retention_cutoff.is_some_and(|cutoff| event.timestamp < cutoff) {
            let error = Error::FailedPrecondition(format!(
                "events[{index}].timestamp: older than the project's data retention (retention_days)"
            ));
            sorted.outcome.rejected.push(ItemError { index, event_id: event.event_id, error });
            continue;
        }
        let repeated = !batch_ids.insert(xxhash_rust::xxh3::xxh3_128(event.event_id.as_bytes()));
        if repeated || (received.quarantined)(&event.event_id) {
            sorted.outcome.duplicates += 1;
            continue;
        }
        let reasons = if enforcement == Enforcement::Allow {
            Vec::new()
        } else {
            catalog::violations(&event, plan.get(&event.name))
        };
        let stored = reasons.is_empty() || enforcement == Enforcement::Warn;
        // Only stored events add keys; a quarantined one adds its keys when replayed.
        if stored && let Err(error) = key_budget.admit(&[("properties", &event.properties)]) {
            sorted.outcome.rejected.push(ItemError { index, event_id: event.event_id, error: prefix(index, error) });
            continue;
        }
        if reasons.is_empty() {
            sorted.accepted.push(event);
            continue;
        }
        if (received.stored)(&event.event_id) {
            sorted.outcome.duplicates += 1;
            continue;
        }
        let message = format!("events[{index}]: tracking plan: {}", reasons.join("; "));
        match enforcement {
            Enforcement::Allow => unreachable!("handled above"),
            Enforcement::Warn => {
                sorted.outcome.warnings.push(ItemError {
                    index,
                    event_id: event.event_id.clone(),
                    error: Error::FailedPrecondition(message),
                });
                sorted.accepted.push(event);
            }
            Enforcement::Block => sorted.outcome.rejected.push(ItemError {
                index,
                event_id: event.event_id,
                error: Error::FailedPrecondition(message),
            }),
            Enforcement::Quarantine => {
                sorted.quarantined.push(QuarantinedEvent { id: 0, event, reasons, received: now })
            }
        }
    }
    sorted
}

fn prefix(index: u32, error: Error) -> Error {
    error.under(&format!("events[{index}]"))
}

pub fn validate_user_update(index: usize, update: &UserUpdate, limits: &Limits) -> Result<()> {
    let field = format!("users[{index}]");
    if update.user_id.is_empty() {
        return Err(Error::invalid(format!("{field}.user_id"), "must not be empty"));
    }
    validate_user_id(&format!("{field}.user_id"), &update.user_id)?;
    validate_properties(&format!("{field}.set"), &update.set, limits)?;
    validate_properties(&format!("{field}.set_once"), &update.set_once, limits)?;
    for key in &update.unset {
        validate_name(&format!("{field}.unset"), key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, user: &str) -> Event {
        Event {
            event_id: String::new(),
            name: name.into(),
            user_id: user.into(),
            anonymous_id: String::new(),
            timestamp: 0,
            properties: vec![],
        }
    }

    #[test]
    fn validation_names_the_field() {
        let limits = Limits::default();
        let now = 1_000 * MICROS_PER_SECOND;
        let cases: Vec<(Event, usize, &str)> = vec![
            (event("", "u"), 10, "name"),
            (event(&"x".repeat(201), "u"), 10, "name"),
            (event("a", ""), 10, "user_id"),
            (Event { event_id: "i".repeat(129), ..event("a", "u") }, 10, "event_id"),
            (Event { timestamp: now + 3601 * MICROS_PER_SECOND, ..event("a", "u") }, 10, "timestamp"),
            (event("a", "u"), 40_000, "event"),
            (
                Event { properties: (0..257).map(|i| (format!("p{i}"), Value::Null)).collect(), ..event("a", "u") },
                10,
                "properties",
            ),
            (Event { properties: vec![("x".into(), Value::Number(f64::NAN))], ..event("a", "u") }, 10, "properties.x"),
            (Event { user_id: "a\0b".into(), ..event("a", "u") }, 10, "user_id"),
        ];
        for (mut e, len, field) in cases {
            match validate_event(&mut e, len, &limits, now) {
                Err(Error::InvalidArgument { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut ok = Event { timestamp: now + 3600 * MICROS_PER_SECOND, ..event("a", "u") };
        validate_event(&mut ok, 10, &limits, now).unwrap();
        assert_eq!(ok.event_id.len(), 36, "a uuid is assigned");
    }

    #[test]
    fn enforcement_sorts_events() {
        let limits = Limits::default();
        let plan = BTreeMap::from([("known".to_string(), EventType { name: "known".into(), ..Default::default() })]);
        let batch = || {
            vec![
                Incoming { event: Ok(event("known", "u")), encoded_len: 1 },
                Incoming { event: Ok(event("unknown", "u")), encoded_len: 1 },
                Incoming { event: Ok(event("", "u")), encoded_len: 1 },
            ]
        };
        let allow = sort_batch(batch(), Enforcement::Allow, &plan, &limits, 0, None, &Received::NOTHING);
        assert_eq!((allow.accepted.len(), allow.outcome.rejected.len()), (2, 1));
        assert_eq!(allow.outcome.rejected[0].index, 2);
        let warn = sort_batch(batch(), Enforcement::Warn, &plan, &limits, 0, None, &Received::NOTHING);
        assert_eq!((warn.accepted.len(), warn.outcome.warnings.len()), (2, 1));
        assert_eq!(warn.outcome.warnings[0].index, 1);
        let block = sort_batch(batch(), Enforcement::Block, &plan, &limits, 0, None, &Received::NOTHING);
        assert_eq!((block.accepted.len(), block.outcome.rejected.len()), (1, 2));
        let quarantine = sort_batch(batch(), Enforcement::Quarantine, &plan, &limits, 0, None, &Received::NOTHING);
        assert_eq!((quarantine.accepted.len(), quarantine.quarantined.len()), (1, 1));
    }

    #[test]
    fn duplicates_are_decided_before_the_plan() {
        let limits = Limits::default();
        let plan = BTreeMap::from([("known".to_string(), EventType { name: "known".into(), ..Default::default() })]);
        let with_id = |id: &str, name: &str| Incoming {
            event: Ok(Event { event_id: id.into(), ..event(name, "u") }),
            encoded_len: 1,
        };
        // "s" is stored, "q" quarantined; "b" repeats inside the batch.
        let stored = |id: &str| id == "s";
        let quarantined = |id: &str| id == "q";
        let received = Received { stored: &stored, quarantined: &quarantined, ..Received::NOTHING };
        let batch = || {
            vec![
                with_id("s", "unknown"),
                with_id("q", "known"),
                with_id("b", "known"),
                with_id("b", "unknown"),
                with_id("n", "unknown"),
            ]
        };
        for enforcement in [Enforcement::Block, Enforcement::Quarantine] {
            let sorted = sort_batch(batch(), enforcement, &plan, &limits, 0, None, &received);
            assert_eq!(sorted.outcome.duplicates, 3, "{enforcement:?}");
            assert_eq!(sorted.accepted.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(), vec!["b"]);
            let judged: Vec<u32> = sorted.outcome.rejected.iter().map(|r| r.index).collect();
            let held: Vec<&str> = sorted.quarantined.iter().map(|q| q.event.event_id.as_str()).collect();
            match enforcement {
                Enforcement::Block => assert_eq!((judged, held), (vec![4], vec![])),
                _ => assert_eq!((judged, held), (vec![], vec!["n"])),
            }
        }
        // A valid event with a stored id is left to the writer, which acknowledges it.
        let sorted = sort_batch(vec![with_id("s", "known")], Enforcement::Block, &plan, &limits, 0, None, &received);
        assert_eq!((sorted.accepted.len(), sorted.outcome.duplicates), (1, 0));
    }

    #[test]
    fn events_past_the_retention_are_refused_with_their_index() {
        let limits = Limits::default();
        let at = |id: &str, t: Micros| Incoming {
            event: Ok(Event { event_id: id.into(), timestamp: t, ..event("view", "u") }),
            encoded_len: 1,
        };
        let batch = vec![at("old", 99), at("edge", 100), at("new", 500)];
        let sorted =
            sort_batch(batch, Enforcement::Allow, &BTreeMap::new(), &limits, 1_000, Some(100), &Received::NOTHING);
        let kept: Vec<&str> = sorted.accepted.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(kept, vec!["edge", "new"]);
        let refused = &sorted.outcome.rejected;
        assert_eq!((refused.len(), refused[0].index, refused[0].event_id.as_str()), (1, 0, "old"));
        assert!(matches!(&refused[0].error, Error::FailedPrecondition(m) if m.contains("events[0].timestamp")));
    }
}
