//! Ingestion: per-event validation, tracking-plan enforcement, and the single writer thread
//! that deduplicates, appends and group-commits.
//!
//! Every write goes through one thread fed by a bounded channel. The thread takes whatever
//! jobs are waiting (up to `MAX_GROUP`), dedupes their events against the in-memory id set,
//! appends one log value per job, makes them durable with one `sync`, applies them to the
//! in-memory tables and only then replies: an ack means on disk and visible to queries.
//! The bounded channel is the backpressure: when the writer is behind, senders wait.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::catalog::{self, validate_name};
use super::engine::ProjectEntry;
use super::model::{Enforcement, Event, EventType, MICROS_PER_SECOND, Micros, QuarantinedEvent, UserUpdate, Value};
use crate::error::{Error, Result};
use crate::storage::{LogRecord, Storage};

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
        return Err(Error::invalid(
            field,
            format!("{} bytes, at most {MAX_USER_ID_BYTES}", id.len()),
        ));
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
        validate_name(&format!("{field}.{key}"), key)?;
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
        return Err(Error::invalid(
            "event_id",
            format!("{} bytes, at most {MAX_ID_BYTES}", event.event_id.len()),
        ));
    }
    if event.user_id.is_empty() && event.anonymous_id.is_empty() {
        return Err(Error::invalid("user_id", "user_id or anonymous_id is required"));
    }
    validate_user_id("user_id", &event.user_id)?;
    validate_user_id("anonymous_id", &event.anonymous_id)?;
    if event.timestamp > now + limits.max_future_micros {
        return Err(Error::invalid(
            "timestamp",
            format!(
                "more than {} s in the future",
                limits.max_future_micros / MICROS_PER_SECOND
            ),
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

/// Validates a batch and applies the project's enforcement to it.
pub fn sort_batch(
    items: Vec<Incoming>,
    enforcement: Enforcement,
    plan: &dyn Fn(&str) -> Option<EventType>,
    limits: &Limits,
    now: Micros,
) -> Sorted {
    let mut sorted = Sorted::default();
    for (index, item) in items.into_iter().enumerate() {
        let index = index as u32;
        let mut event = match item.event {
            Ok(event) => event,
            Err(error) => {
                sorted.outcome.rejected.push(ItemError {
                    index,
                    event_id: String::new(),
                    error: prefix(index, error),
                });
                continue;
            }
        };
        if let Err(error) = validate_event(&mut event, item.encoded_len, limits, now) {
            sorted.outcome.rejected.push(ItemError {
                index,
                event_id: event.event_id,
                error: prefix(index, error),
            });
            continue;
        }
        if enforcement == Enforcement::Allow {
            sorted.accepted.push(event);
            continue;
        }
        let reasons = catalog::violations(&event, plan(&event.name).as_ref());
        if reasons.is_empty() {
            sorted.accepted.push(event);
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
            Enforcement::Quarantine => sorted.quarantined.push(QuarantinedEvent {
                id: 0,
                event,
                reasons,
                received: now,
            }),
        }
    }
    sorted
}

fn prefix(index: u32, error: Error) -> Error {
    match error {
        Error::InvalidArgument { field, message } => Error::invalid(format!("events[{index}].{field}"), message),
        other => other,
    }
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

/// What the writer is asked to make durable.
pub enum WriteOp {
    Events {
        events: Vec<Event>,
        quarantine: Vec<QuarantinedEvent>,
        /// Quarantine entries leaving the quarantine with this write (replay).
        unquarantine: Vec<u64>,
    },
    Users {
        at: Micros,
        updates: Vec<UserUpdate>,
    },
    Alias {
        anonymous_id: String,
        user_id: String,
    },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    pub accepted: u64,
    pub duplicates: u64,
}

pub struct WriteJob {
    pub project_id: String,
    pub project: Arc<ProjectEntry>,
    pub op: WriteOp,
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

pub fn event_key(project: &str, event_id: &str) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(project.as_bytes());
    hasher.update(&[0]);
    hasher.update(event_id.as_bytes());
    hasher.digest128()
}

const MAX_GROUP: usize = 64;

pub struct Writer {
    pub sender: mpsc::Sender<WriteJob>,
    pub thread: JoinHandle<()>,
}

/// Starts the writer thread; it ends when every sender is dropped, after syncing.
pub fn spawn_writer(storage: Arc<dyn Storage>, seen: SeenIds, next_quarantine_id: u64, capacity: usize) -> Writer {
    let (sender, receiver) = mpsc::channel(capacity);
    let thread = std::thread::Builder::new()
        .name("sextant-writer".into())
        .spawn(move || run_writer(storage, receiver, seen, next_quarantine_id))
        .expect("spawning the writer thread");
    Writer { sender, thread }
}

/// A job after dedupe: the records to append and what to undo if they fail.
struct Prepared {
    job: WriteJob,
    records: Vec<LogRecord>,
    added: Vec<u128>,
    result: WriteResult,
}

fn run_writer(
    storage: Arc<dyn Storage>,
    mut receiver: mpsc::Receiver<WriteJob>,
    mut seen: SeenIds,
    mut next_quarantine_id: u64,
) {
    while let Some(first) = receiver.blocking_recv() {
        let started = Instant::now();
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut prepared: Vec<Prepared> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut p = prepare(job, &mut seen, &mut next_quarantine_id);
            if let Err(err) = storage.append(&p.records) {
                forget(&mut seen, &p.added);
                p.records.clear();
                let _ = p.job.reply.send(Err(err));
                continue;
            }
            prepared.push(p);
        }
        if let Err(err) = storage.sync() {
            tracing::error!(error = %err, "sync failed; failing the group");
            for p in prepared {
                forget(&mut seen, &p.added);
                let _ = p.job.reply.send(Err(Error::Storage(err.to_string())));
            }
            continue;
        }
        let mut events = 0u64;
        for p in &prepared {
            let mut state = p.job.project.write();
            for record in &p.records {
                state.apply(record);
            }
            events += p.result.accepted;
        }
        metrics::histogram!("sextant_group_commit_seconds").record(started.elapsed().as_secs_f64());
        tracing::trace!(jobs = prepared.len(), events, "group committed");
        for p in prepared {
            metrics::counter!("sextant_events_accepted_total").increment(p.result.accepted);
            metrics::counter!("sextant_events_duplicate_total").increment(p.result.duplicates);
            let _ = p.job.reply.send(Ok(p.result));
        }
    }
    if let Err(err) = storage.sync() {
        tracing::error!(error = %err, "final sync failed");
    }
}

fn forget(seen: &mut SeenIds, added: &[u128]) {
    for key in added {
        seen.remove(key);
    }
}

fn prepare(mut job: WriteJob, seen: &mut SeenIds, next_quarantine_id: &mut u64) -> Prepared {
    let project = job.project_id.clone();
    let mut records = Vec::with_capacity(2);
    let mut added = Vec::new();
    let mut result = WriteResult::default();
    match std::mem::replace(
        &mut job.op,
        WriteOp::Alias {
            anonymous_id: String::new(),
            user_id: String::new(),
        },
    ) {
        WriteOp::Events {
            events,
            mut quarantine,
            unquarantine,
        } => {
            let mut fresh = Vec::with_capacity(events.len());
            for event in events {
                let key = event_key(&project, &event.event_id);
                if seen.insert(key) {
                    added.push(key);
                    fresh.push(event);
                } else {
                    result.duplicates += 1;
                }
            }
            result.accepted = fresh.len() as u64;
            if !fresh.is_empty() {
                records.push(LogRecord::Events {
                    project: project.clone(),
                    events: fresh,
                });
            }
            if !quarantine.is_empty() {
                for entry in &mut quarantine {
                    entry.id = *next_quarantine_id;
                    *next_quarantine_id += 1;
                }
                records.push(LogRecord::Quarantined {
                    project: project.clone(),
                    entries: quarantine,
                });
            }
            if !unquarantine.is_empty() {
                records.push(LogRecord::Unquarantined {
                    project,
                    ids: unquarantine,
                });
            }
        }
        WriteOp::Users { at, updates } => {
            result.accepted = updates.len() as u64;
            records.push(LogRecord::Users { project, at, updates });
        }
        WriteOp::Alias { anonymous_id, user_id } => {
            result.accepted = 1;
            records.push(LogRecord::Alias {
                project,
                anonymous_id,
                user_id,
            });
        }
    }
    Prepared {
        job,
        records,
        added,
        result,
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
            (
                Event {
                    event_id: "i".repeat(129),
                    ..event("a", "u")
                },
                10,
                "event_id",
            ),
            (
                Event {
                    timestamp: now + 3601 * MICROS_PER_SECOND,
                    ..event("a", "u")
                },
                10,
                "timestamp",
            ),
            (event("a", "u"), 40_000, "event"),
            (
                Event {
                    properties: (0..257).map(|i| (format!("p{i}"), Value::Null)).collect(),
                    ..event("a", "u")
                },
                10,
                "properties",
            ),
            (
                Event {
                    properties: vec![("x".into(), Value::Number(f64::NAN))],
                    ..event("a", "u")
                },
                10,
                "properties.x",
            ),
            (
                Event {
                    user_id: "a\0b".into(),
                    ..event("a", "u")
                },
                10,
                "user_id",
            ),
        ];
        for (mut e, len, field) in cases {
            match validate_event(&mut e, len, &limits, now) {
                Err(Error::InvalidArgument { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut ok = Event {
            timestamp: now + 3600 * MICROS_PER_SECOND,
            ..event("a", "u")
        };
        validate_event(&mut ok, 10, &limits, now).unwrap();
        assert_eq!(ok.event_id.len(), 36, "a uuid is assigned");
    }

    #[test]
    fn enforcement_sorts_events() {
        let limits = Limits::default();
        let plan = |name: &str| {
            (name == "known").then(|| EventType {
                name: name.into(),
                ..Default::default()
            })
        };
        let batch = || {
            vec![
                Incoming {
                    event: Ok(event("known", "u")),
                    encoded_len: 1,
                },
                Incoming {
                    event: Ok(event("unknown", "u")),
                    encoded_len: 1,
                },
                Incoming {
                    event: Ok(event("", "u")),
                    encoded_len: 1,
                },
            ]
        };
        let allow = sort_batch(batch(), Enforcement::Allow, &plan, &limits, 0);
        assert_eq!((allow.accepted.len(), allow.outcome.rejected.len()), (2, 1));
        assert_eq!(allow.outcome.rejected[0].index, 2);
        let warn = sort_batch(batch(), Enforcement::Warn, &plan, &limits, 0);
        assert_eq!((warn.accepted.len(), warn.outcome.warnings.len()), (2, 1));
        assert_eq!(warn.outcome.warnings[0].index, 1);
        let block = sort_batch(batch(), Enforcement::Block, &plan, &limits, 0);
        assert_eq!((block.accepted.len(), block.outcome.rejected.len()), (1, 2));
        let quarantine = sort_batch(batch(), Enforcement::Quarantine, &plan, &limits, 0);
        assert_eq!((quarantine.accepted.len(), quarantine.quarantined.len()), (1, 1));
    }

    #[test]
    fn event_keys_separate_projects() {
        assert_ne!(event_key("a", "bc"), event_key("ab", "c"));
        assert_eq!(event_key("a", "x"), event_key("a", "x"));
    }
}
