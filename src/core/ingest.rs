//! Ingestion: per-event validation, tracking-plan enforcement, and the single writer thread
//! that deduplicates, appends and group-commits.
//!
//! Every write goes through one thread fed by a bounded channel. The thread takes whatever
//! jobs are waiting (up to `MAX_GROUP`), dedupes their events against the in-memory id set,
//! appends one log value per job, makes them durable with one `sync`, applies them to the
//! in-memory tables and only then replies: an ack means on disk and visible to queries.
//! The bounded channel is the backpressure: when the writer is behind, senders wait.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::catalog::{self, validate_name};
use super::engine::ProjectEntry;
use super::model::{Enforcement, Event, EventType, MICROS_PER_SECOND, Micros, QuarantinedEvent, UserUpdate, Value};
use crate::error::{Error, Result};
use crate::storage::{Encoded, LogRecord, Storage};

/// Configurable ingest limits (SPEC §3 defaults).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_batch_events: usize,
    pub max_event_bytes: usize,
    pub max_properties: usize,
    pub max_future_micros: Micros,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_events: 5_000,
            max_event_bytes: 32 * 1024,
            max_properties: 256,
            max_future_micros: 3600 * MICROS_PER_SECOND,
        }
    }
}

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
}

impl Received<'_> {
    /// Nothing received: every id is new.
    pub const NOTHING: Received<'static> = Received { stored: &|_| false, quarantined: &|_| false };
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
    received: &Received,
) -> Sorted {
    let mut sorted = Sorted::default();
    let mut batch_ids: HashSet<u128, BuildHasherDefault<IdHasher>> = HashSet::default();
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
        let repeated = !batch_ids.insert(xxhash_rust::xxh3::xxh3_128(event.event_id.as_bytes()));
        if repeated || (received.quarantined)(&event.event_id) {
            sorted.outcome.duplicates += 1;
            continue;
        }
        if enforcement == Enforcement::Allow {
            sorted.accepted.push(event);
            continue;
        }
        let reasons = catalog::violations(&event, plan.get(&event.name));
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

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    /// New events among `keys`.
    pub accepted: u64,
    /// Events among `keys` seen before.
    pub duplicates: u64,
}

/// Records to make durable, already encoded. If the first record is `Events`, `keys` holds
/// its events' dedupe keys in order and the writer stores only the new ones in memory.
pub struct WriteJob {
    pub project: Arc<ProjectEntry>,
    pub records: Vec<LogRecord>,
    pub encoded: Vec<Encoded>,
    pub keys: Vec<u128>,
    pub reply: oneshot::Sender<Result<WriteResult>>,
}

/// Hashes already spread their bits: use the low 64 as the table hash.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(buf);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// 128-bit hashes of (project, event id): every event id ever accepted.
pub type SeenIds = HashSet<u128, BuildHasherDefault<IdHasher>>;

/// The writer's id set, shared so that ingestion can ask whether an id was stored before the
/// tracking plan judges it. Only the writer thread writes it.
pub type SharedIds = Arc<parking_lot::RwLock<SeenIds>>;

pub fn event_key(project: &str, event_id: &str) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(project.as_bytes());
    hasher.update(&[0]);
    hasher.update(event_id.as_bytes());
    hasher.digest128()
}

/// Marks which keys are new, adding them to `seen`; a key repeated inside `keys` is new once.
pub fn dedupe(seen: &mut SeenIds, keys: &[u128]) -> Vec<bool> {
    keys.iter().map(|key| seen.insert(*key)).collect()
}

const MAX_GROUP: usize = 64;

pub struct Writer {
    pub sender: mpsc::Sender<WriteJob>,
    pub thread: JoinHandle<()>,
}

/// Starts the writer thread; it ends when every sender is dropped, after syncing.
pub fn spawn_writer(storage: Arc<dyn Storage>, seen: SharedIds, capacity: usize) -> Writer {
    let (sender, receiver) = mpsc::channel(capacity);
    let thread = std::thread::Builder::new()
        .name("sextant-writer".into())
        .spawn(move || run_writer(storage, receiver, seen))
        .expect("spawning the writer thread");
    Writer { sender, thread }
}

/// A job whose records were appended, waiting for the group's sync.
struct Appended {
    job: WriteJob,
    keep: Vec<bool>,
    result: WriteResult,
}

fn run_writer(storage: Arc<dyn Storage>, mut receiver: mpsc::Receiver<WriteJob>, seen: SharedIds) {
    while let Some(first) = receiver.blocking_recv() {
        let started = Instant::now();
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut appended: Vec<Appended> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let keep = dedupe(&mut seen.write(), &job.keys);
            let accepted = keep.iter().filter(|k| **k).count() as u64;
            let result = WriteResult { accepted, duplicates: keep.len() as u64 - accepted };
            if let Err(err) = storage.append(&job.encoded) {
                forget(&mut seen.write(), &job.keys, &keep);
                let _ = job.reply.send(Err(err));
                continue;
            }
            appended.push(Appended { job, keep, result });
        }
        if let Err(err) = storage.sync() {
            tracing::error!(error = %err, "sync failed; failing the group");
            for a in appended {
                forget(&mut seen.write(), &a.job.keys, &a.keep);
                let _ = a.job.reply.send(Err(Error::Storage(err.to_string())));
            }
            continue;
        }
        let mut events = 0u64;
        let mut touched: Vec<&Arc<ProjectEntry>> = Vec::new();
        for a in &appended {
            let mut state = a.job.project.write();
            for record in &a.job.records {
                state.apply(record, &a.keep);
            }
            state.compact();
            events += a.result.accepted;
            if !touched.iter().any(|p| Arc::ptr_eq(p, &a.job.project)) {
                touched.push(&a.job.project);
            }
        }
        // Once per project and group, after everything is applied: live queries re-read then.
        for project in touched {
            project.read().changes.send_modify(|n| *n += 1);
        }
        metrics::histogram!("sextant_group_commit_seconds").record(started.elapsed().as_secs_f64());
        tracing::trace!(jobs = appended.len(), events, "group committed");
        for a in appended {
            metrics::counter!("sextant_events_accepted_total").increment(a.result.accepted);
            metrics::counter!("sextant_events_duplicate_total").increment(a.result.duplicates);
            let _ = a.job.reply.send(Ok(a.result));
        }
    }
    if let Err(err) = storage.sync() {
        tracing::error!(error = %err, "final sync failed");
    }
}

/// Undoes `dedupe` for a job that did not become durable.
fn forget(seen: &mut SeenIds, keys: &[u128], keep: &[bool]) {
    for (key, kept) in keys.iter().zip(keep) {
        if *kept {
            seen.remove(key);
        }
    }
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
        let allow = sort_batch(batch(), Enforcement::Allow, &plan, &limits, 0, &Received::NOTHING);
        assert_eq!((allow.accepted.len(), allow.outcome.rejected.len()), (2, 1));
        assert_eq!(allow.outcome.rejected[0].index, 2);
        let warn = sort_batch(batch(), Enforcement::Warn, &plan, &limits, 0, &Received::NOTHING);
        assert_eq!((warn.accepted.len(), warn.outcome.warnings.len()), (2, 1));
        assert_eq!(warn.outcome.warnings[0].index, 1);
        let block = sort_batch(batch(), Enforcement::Block, &plan, &limits, 0, &Received::NOTHING);
        assert_eq!((block.accepted.len(), block.outcome.rejected.len()), (1, 2));
        let quarantine = sort_batch(batch(), Enforcement::Quarantine, &plan, &limits, 0, &Received::NOTHING);
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
        let received = Received { stored: &stored, quarantined: &quarantined };
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
            let sorted = sort_batch(batch(), enforcement, &plan, &limits, 0, &received);
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
        let sorted = sort_batch(vec![with_id("s", "known")], Enforcement::Block, &plan, &limits, 0, &received);
        assert_eq!((sorted.accepted.len(), sorted.outcome.duplicates), (1, 0));
    }

    #[test]
    fn dedupe_keeps_the_first_of_each_key() {
        let mut seen = SeenIds::default();
        assert_eq!(dedupe(&mut seen, &[1, 2, 1, 3]), vec![true, true, false, true]);
        assert_eq!(dedupe(&mut seen, &[3, 4]), vec![false, true]);
        forget(&mut seen, &[3, 4], &[false, true]);
        assert_eq!(dedupe(&mut seen, &[4, 3]), vec![true, false]);
    }

    #[test]
    fn event_keys_separate_projects() {
        assert_ne!(event_key("a", "bc"), event_key("ab", "c"));
        assert_eq!(event_key("a", "x"), event_key("a", "x"));
    }
}
