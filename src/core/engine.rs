//! The engine: projects and their in-memory state, backed by a `Storage`.
//!
//! Meta objects are read from storage at start; the event log is replayed into one
//! `ProjectState` per project. Reads take a project's read lock; the writer thread takes its
//! write lock only to append already-durable records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::oneshot;

use super::auth::ApiKey;
use super::catalog::{validate_event_type, validate_name, validate_slug, validate_timezone};
use super::cohort::Cohort;
use super::experiment::definition::Experiment;
use super::experiment::holdout::Holdout;
use super::goals::Goal;
use super::ingest::{self, Incoming, Limits, SeenIds, TrackOutcome, WriteJob, WriteResult, Writer};
use super::metric::Metric;
use super::model::{
    Enforcement, Event, EventType, ManualValue, Micros, Project, ProjectStats, ProjectUpdate, QuarantinedEvent,
    UserUpdate, Value, now_micros,
};
use super::person_order::PersonOrderCache;
use super::query::TraitGroupCache;
use super::table::EventTable;
use crate::error::{Error, Result};
use crate::storage::{LogRecord, Storage, encode_record};

/// Everything known about one project.
#[derive(Debug)]
pub struct ProjectState {
    pub project: Project,
    pub event_types: BTreeMap<String, EventType>,
    pub table: EventTable,
    /// Per user person id: traits by name.
    pub traits: HashMap<u32, BTreeMap<String, Value>>,
    pub quarantine: BTreeMap<u64, QuarantinedEvent>,
    /// Every version of every metric, oldest first.
    pub metrics: BTreeMap<String, Vec<Metric>>,
    pub goals: BTreeMap<String, Goal>,
    /// MANUAL metric values by metric key, keyed by (timestamp, dimensions).
    pub manual: HashMap<String, BTreeMap<(Micros, String), ManualValue>>,
    pub cohorts: BTreeMap<String, Cohort>,
    /// Events by person then time, for funnels and retention; rebuilt lazily.
    pub person_order: PersonOrderCache,
    /// Bumped on every trait change, so caches derived from traits know when to rebuild.
    pub traits_version: u64,
    pub trait_groups: TraitGroupCache,
    pub experiments: BTreeMap<String, Experiment>,
    pub holdouts: BTreeMap<String, Holdout>,
    /// Bumped after the writer applied records to this project (and when a metric definition
    /// changes): live queries wait on it instead of polling (`core::live`).
    pub changes: tokio::sync::watch::Sender<u64>,
}

pub type ProjectEntry = RwLock<ProjectState>;

impl ProjectState {
    pub(crate) fn new(project: Project) -> Self {
        ProjectState {
            project,
            event_types: BTreeMap::new(),
            table: EventTable::default(),
            traits: HashMap::new(),
            quarantine: BTreeMap::new(),
            metrics: BTreeMap::new(),
            manual: HashMap::new(),
            goals: BTreeMap::new(),
            cohorts: BTreeMap::new(),
            person_order: PersonOrderCache::default(),
            traits_version: 0,
            trait_groups: TraitGroupCache::default(),
            experiments: BTreeMap::new(),
            holdouts: BTreeMap::new(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// An empty UTC project `p`, for unit tests of analyses.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        ProjectState::new(Project {
            id: "p".into(),
            name: String::new(),
            timezone: "UTC".into(),
            enforcement: Default::default(),
            retention_days: 0,
            created: 0,
        })
    }

    /// Applies a durable log record. For `Events`, `keep[i]` says whether event i is new
    /// (not a duplicate); an empty `keep` keeps every event.
    pub fn apply(&mut self, record: &LogRecord, keep: &[bool]) {
        match record {
            LogRecord::Events { events, .. } => {
                for (i, event) in events.iter().enumerate() {
                    if keep.get(i).copied().unwrap_or(true) {
                        self.table.push(event);
                    }
                }
            }
            LogRecord::Users { updates, .. } => {
                for update in updates {
                    self.apply_user_update(update);
                }
            }
            LogRecord::Alias { anonymous_id, user_id, .. } => self.table.alias(anonymous_id, user_id),
            LogRecord::Quarantined { entries, .. } => {
                for entry in entries {
                    self.quarantine.insert(entry.id, entry.clone());
                }
            }
            LogRecord::Unquarantined { ids, .. } => {
                for id in ids {
                    self.quarantine.remove(id);
                }
            }
            LogRecord::ManualValues { metric_key, values, .. } => {
                let stored = self.manual.entry(metric_key.clone()).or_default();
                for value in values {
                    let key = (value.timestamp, format!("{:?}", value.dimensions));
                    stored.insert(key, value.clone());
                }
            }
            LogRecord::ManualCleared { metric_key, .. } => {
                self.manual.remove(metric_key);
            }
            LogRecord::UserDeleted { user_id, .. } => self.erase_user(user_id),
            LogRecord::EventsExpired { before, .. } => self.expire(*before),
        }
    }

    /// Removes the rows that `apply` marked for erasure (DeleteUser, retention). The writer
    /// calls it after each job, replay once at the end, so a log with many deletions replays
    /// in one pass.
    pub fn compact(&mut self) -> usize {
        self.table.compact()
    }

    /// Marks the user's events (aliased anonymous ids' included) for erasure and forgets its
    /// traits, aliases and quarantined events at once.
    fn erase_user(&mut self, user_id: &str) {
        let table = &mut self.table;
        let Some(person) = table.find_user(user_id) else {
            return;
        };
        for row in table.user_rows(person) {
            table.erase(row);
        }
        let anonymous: std::collections::HashSet<String> =
            table.unalias_all(person).into_iter().map(|a| table.person_name(a).to_owned()).collect();
        self.traits.remove(&person);
        self.traits_version += 1;
        self.quarantine.retain(|_, q| {
            let event = &q.event;
            event.user_id != user_id && !(event.user_id.is_empty() && anonymous.contains(&event.anonymous_id))
        });
    }

    /// Marks events older than `before` for erasure and drops old quarantined events.
    fn expire(&mut self, before: Micros) {
        let table = &mut self.table;
        if table.min_time.is_some_and(|t| t < before) {
            for row in 0..table.len() {
                if table.time[row] < before {
                    table.erase(row as u32);
                }
            }
        }
        self.quarantine.retain(|_, q| q.event.timestamp >= before);
    }

    fn apply_user_update(&mut self, update: &UserUpdate) {
        self.traits_version += 1;
        let person = self.table.user_person(&update.user_id);
        let traits = self.traits.entry(person).or_default();
        for (key, value) in &update.set {
            // Setting null removes the trait: a null trait and a missing one mean the same.
            if matches!(value, Value::Null) {
                traits.remove(key);
            } else {
                traits.insert(key.clone(), value.clone());
            }
        }
        for (key, value) in &update.set_once {
            if !matches!(value, Value::Null) {
                traits.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        for key in &update.unset {
            traits.remove(key);
        }
    }
}

pub struct Engine {
    storage: Arc<dyn Storage>,
    projects: RwLock<BTreeMap<String, Arc<ProjectEntry>>>,
    writer: Mutex<Option<Writer>>,
    sender: RwLock<Option<tokio::sync::mpsc::Sender<WriteJob>>>,
    next_quarantine_id: AtomicU64,
    /// Every project's API keys by key id (see `auth`).
    pub(crate) api_keys: RwLock<BTreeMap<String, ApiKey>>,
    pub limits: Limits,
    /// Live metric feeds and watch streams (WatchMetric).
    pub live: super::live::LiveHub,
}

fn project_key(id: &str) -> String {
    format!("project/{id}")
}

fn event_type_key(project: &str, name: &str) -> String {
    format!("event_type/{project}/{name}")
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(format!("encode meta: {e}")))
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Storage(format!("decode {key}: {e}")))
}

/// How many write jobs may wait for the writer before senders wait too.
const WRITE_QUEUE: usize = 64;

impl Engine {
    /// Loads meta objects and replays the log, then starts the writer.
    pub fn open(storage: Arc<dyn Storage>, limits: Limits) -> Result<Arc<Engine>> {
        let started = std::time::Instant::now();
        let mut projects = BTreeMap::new();
        for (key, bytes) in storage.scan_meta("project/")? {
            let project: Project = decode(&key, &bytes)?;
            projects.insert(project.id.clone(), ProjectState::new(project));
        }
        // Per-project objects are keyed `kind/<project>/...`; objects of unknown projects are skipped.
        fn load<T: DeserializeOwned>(
            storage: &dyn Storage,
            prefix: &str,
            projects: &mut BTreeMap<String, ProjectState>,
            mut add: impl FnMut(&mut ProjectState, T),
        ) -> Result<()> {
            for (key, bytes) in storage.scan_meta(prefix)? {
                let object: T = decode(&key, &bytes)?;
                if let Some(state) = projects.get_mut(key.split('/').nth(1).unwrap_or_default()) {
                    add(state, object);
                }
            }
            Ok(())
        }
        load(storage.as_ref(), "event_type/", &mut projects, |state, t: EventType| {
            state.event_types.insert(t.name.clone(), t);
        })?;
        // Keys sort by version (zero-padded), so pushing in key order keeps versions in order.
        load(storage.as_ref(), "metric/", &mut projects, |state, m: Metric| {
            state.metrics.entry(m.key.clone()).or_default().push(m);
        })?;
        load(storage.as_ref(), "goal/", &mut projects, |state, g: Goal| {
            state.goals.insert(g.id.clone(), g);
        })?;
        load(storage.as_ref(), "cohort/", &mut projects, |state, c: Cohort| {
            state.cohorts.insert(c.id.clone(), c);
        })?;
        load(storage.as_ref(), "experiment/", &mut projects, |state, e: Experiment| {
            state.experiments.insert(e.key.clone(), e);
        })?;
        load(storage.as_ref(), "holdout/", &mut projects, |state, h: Holdout| {
            state.holdouts.insert(h.key.clone(), h);
        })?;
        let mut api_keys = BTreeMap::new();
        for (key, bytes) in storage.scan_meta("api_key/")? {
            let api_key: ApiKey = decode(&key, &bytes)?;
            if projects.contains_key(&api_key.project) {
                api_keys.insert(api_key.id.clone(), api_key);
            }
        }
        let mut seen = SeenIds::default();
        let mut next_quarantine_id = 0u64;
        let mut records = 0u64;
        storage.replay(&mut |record| {
            records += 1;
            let project = record.project();
            let Some(state) = projects.get_mut(project) else {
                tracing::warn!(project = %project, "log record of an unknown project skipped");
                return Ok(());
            };
            let keep = match &record {
                LogRecord::Events { events, .. } => {
                    let keys: Vec<u128> = events.iter().map(|e| ingest::event_key(project, &e.event_id)).collect();
                    ingest::dedupe(&mut seen, &keys)
                }
                LogRecord::Quarantined { entries, .. } => {
                    let max = entries.iter().map(|e| e.id + 1).max().unwrap_or(0);
                    next_quarantine_id = next_quarantine_id.max(max);
                    Vec::new()
                }
                _ => Vec::new(),
            };
            state.apply(&record, &keep);
            Ok(())
        })?;
        for state in projects.values_mut() {
            state.compact();
        }
        let events: usize = projects.values().map(|p| p.table.len()).sum();
        tracing::info!(
            projects = projects.len(),
            records,
            events,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "storage loaded"
        );
        let writer = ingest::spawn_writer(storage.clone(), seen, WRITE_QUEUE);
        let sender = writer.sender.clone();
        Ok(Arc::new(Engine {
            storage,
            projects: RwLock::new(projects.into_iter().map(|(id, state)| (id, Arc::new(RwLock::new(state)))).collect()),
            writer: Mutex::new(Some(writer)),
            sender: RwLock::new(Some(sender)),
            next_quarantine_id: AtomicU64::new(next_quarantine_id),
            api_keys: RwLock::new(api_keys),
            limits,
            live: super::live::LiveHub::default(),
        }))
    }

    /// Stops the writer after the queued writes and makes everything durable. Writes after
    /// this fail with UNAVAILABLE.
    pub fn close(&self) -> Result<()> {
        self.stop_live();
        self.sender.write().take();
        if let Some(writer) = self.writer.lock().take() {
            drop(writer.sender);
            let _ = writer.thread.join();
        }
        self.storage.sync()
    }

    pub(crate) fn put_meta_json<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.storage.put_meta(key, &encode(value)?)
    }

    /// Raw storage, for backups.
    pub(crate) fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    pub(crate) fn delete_meta(&self, key: &str) -> Result<()> {
        self.storage.delete_meta(key)
    }

    pub fn project(&self, id: &str) -> Result<Arc<ProjectEntry>> {
        validate_slug("project", id)?;
        self.projects.read().get(id).cloned().ok_or_else(|| Error::NotFound(format!("project {id:?} not found")))
    }

    // ---- projects ----

    pub fn create_project(&self, mut project: Project) -> Result<Project> {
        validate_slug("project.id", &project.id)?;
        project.timezone = validate_timezone("project.timezone", &project.timezone)?;
        if project.name.chars().count() > 200 {
            return Err(Error::invalid("project.name", "longer than 200 characters"));
        }
        if project.name.is_empty() {
            project.name = project.id.clone();
        }
        project.created = now_micros();
        let mut projects = self.projects.write();
        if projects.contains_key(&project.id) {
            return Err(Error::AlreadyExists(format!("project {:?} already exists", project.id)));
        }
        self.storage.put_meta(&project_key(&project.id), &encode(&project)?)?;
        tracing::info!(project = %project.id, "project created");
        projects.insert(project.id.clone(), Arc::new(RwLock::new(ProjectState::new(project.clone()))));
        Ok(project)
    }

    pub fn get_project(&self, id: &str) -> Result<Project> {
        Ok(self.project(id)?.read().project.clone())
    }

    pub fn list_projects(&self) -> Vec<Project> {
        self.projects.read().values().map(|p| p.read().project.clone()).collect()
    }

    pub fn update_project(&self, id: &str, update: ProjectUpdate) -> Result<Project> {
        let entry = self.project(id)?;
        let mut state = entry.write();
        let mut project = state.project.clone();
        if let Some(name) = update.name {
            if name.chars().count() > 200 {
                return Err(Error::invalid("update.name", "longer than 200 characters"));
            }
            project.name = name;
        }
        if let Some(zone) = update.timezone {
            project.timezone = validate_timezone("update.timezone", &zone)?;
        }
        if let Some(enforcement) = update.enforcement {
            project.enforcement = enforcement;
        }
        if let Some(days) = update.retention_days {
            project.retention_days = days;
        }
        self.storage.put_meta(&project_key(id), &encode(&project)?)?;
        state.project = project.clone();
        Ok(project)
    }

    pub fn project_stats(&self, id: &str) -> Result<ProjectStats> {
        let entry = self.project(id)?;
        let state = entry.read();
        let table = &state.table;
        let mut events_by_name: Vec<(String, u64)> = table
            .name_counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (table.names.resolve(i as u32).to_owned(), *n))
            .collect();
        events_by_name.sort();
        let users = table.is_user.iter().filter(|u| **u).count() as u64;
        Ok(ProjectStats {
            events: table.len() as u64,
            events_by_name,
            users,
            first_event: table.min_time,
            last_event: table.max_time,
            bytes_on_disk: self.storage.bytes_on_disk()?,
            quarantined: state.quarantine.len() as u64,
        })
    }

    // ---- tracking plan ----

    pub fn upsert_event_type(&self, project: &str, mut event_type: EventType) -> Result<EventType> {
        let entry = self.project(project)?;
        validate_event_type(&event_type)?;
        event_type.updated = now_micros();
        let mut state = entry.write();
        self.storage.put_meta(&event_type_key(project, &event_type.name), &encode(&event_type)?)?;
        state.event_types.insert(event_type.name.clone(), event_type.clone());
        Ok(event_type)
    }

    pub fn get_event_type(&self, project: &str, name: &str) -> Result<EventType> {
        validate_name("name", name)?;
        self.project(project)?
            .read()
            .event_types
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("event type {name:?} not found")))
    }

    pub fn list_event_types(&self, project: &str) -> Result<Vec<EventType>> {
        Ok(self.project(project)?.read().event_types.values().cloned().collect())
    }

    pub fn delete_event_type(&self, project: &str, name: &str) -> Result<()> {
        validate_name("name", name)?;
        let entry = self.project(project)?;
        let mut state = entry.write();
        if !state.event_types.contains_key(name) {
            return Err(Error::NotFound(format!("event type {name:?} not found")));
        }
        self.storage.delete_meta(&event_type_key(project, name))?;
        state.event_types.remove(name);
        Ok(())
    }

    pub fn list_quarantined(&self, project: &str) -> Result<Vec<QuarantinedEvent>> {
        Ok(self.project(project)?.read().quarantine.values().cloned().collect())
    }

    // ---- ingestion ----

    /// Encodes records here, on the caller's thread, and has the writer make them durable.
    /// `keys` are the dedupe keys of the first record's events, when it is `Events`.
    pub(crate) async fn write(
        &self,
        project: Arc<ProjectEntry>,
        records: Vec<LogRecord>,
        keys: Vec<u128>,
    ) -> Result<WriteResult> {
        let sender = self.sender.read().clone().ok_or(Error::Unavailable)?;
        let encoded = records.iter().map(encode_record).collect::<Result<Vec<_>>>()?;
        let (reply, receiver) = oneshot::channel();
        let job = WriteJob { project, records, encoded, keys, reply };
        sender.send(job).await.map_err(|_| Error::Unavailable)?;
        receiver.await.map_err(|_| Error::Unavailable)?
    }

    /// The records of an ingest step: events first (with their dedupe keys), then quarantine
    /// changes. Quarantine entries get their ids here.
    fn event_records(
        &self,
        project: &str,
        events: Vec<Event>,
        mut quarantine: Vec<QuarantinedEvent>,
        unquarantine: Vec<u64>,
    ) -> (Vec<LogRecord>, Vec<u128>) {
        let mut records = Vec::with_capacity(3);
        let mut keys = Vec::new();
        if !events.is_empty() {
            keys = events.iter().map(|e| ingest::event_key(project, &e.event_id)).collect();
            records.push(LogRecord::Events { project: project.to_owned(), events });
        }
        if !quarantine.is_empty() {
            for entry in &mut quarantine {
                entry.id = self.next_quarantine_id.fetch_add(1, Ordering::Relaxed);
            }
            records.push(LogRecord::Quarantined { project: project.to_owned(), entries: quarantine });
        }
        if !unquarantine.is_empty() {
            records.push(LogRecord::Unquarantined { project: project.to_owned(), ids: unquarantine });
        }
        (records, keys)
    }

    /// Validates, enforces the plan, dedupes and stores a batch; returns once it is durable.
    pub async fn track(&self, project_id: &str, items: Vec<Incoming>) -> Result<TrackOutcome> {
        self.track_with_plan(project_id, items, true).await
    }

    /// `track`, enforcing the tracking plan or not (exposures logged by the experiment
    /// service are checked against their experiment instead).
    pub(crate) async fn track_with_plan(
        &self,
        project_id: &str,
        items: Vec<Incoming>,
        enforce_plan: bool,
    ) -> Result<TrackOutcome> {
        if items.len() > self.limits.max_batch_events {
            return Err(Error::exhausted(
                "events",
                format!("{} events in one request, at most {}", items.len(), self.limits.max_batch_events),
            ));
        }
        let entry = self.project(project_id)?;
        let sorted = {
            let state = entry.read();
            let enforcement = if enforce_plan { state.project.enforcement } else { Enforcement::Allow };
            ingest::sort_batch(items, enforcement, &state.event_types, &self.limits, now_micros())
        };
        let mut outcome = sorted.outcome;
        outcome.quarantined = sorted.quarantined.len() as u64;
        metrics::counter!("sextant_events_rejected_total").increment(outcome.rejected.len() as u64);
        metrics::counter!("sextant_events_quarantined_total").increment(outcome.quarantined);
        if sorted.accepted.is_empty() && sorted.quarantined.is_empty() {
            return Ok(outcome);
        }
        let (records, keys) = self.event_records(project_id, sorted.accepted, sorted.quarantined, vec![]);
        let written = self.write(entry, records, keys).await?;
        outcome.accepted = written.accepted;
        outcome.duplicates = written.duplicates;
        Ok(outcome)
    }

    /// Applies trait updates; invalid items (already failed in decoding, as `(user_id, error)`,
    /// or failing validation here) are returned with their index and skipped.
    pub async fn identify(
        &self,
        project_id: &str,
        updates: Vec<Result<UserUpdate, (String, Error)>>,
    ) -> Result<(u64, Vec<ingest::ItemError>)> {
        if updates.len() > self.limits.max_batch_events {
            return Err(Error::exhausted(
                "users",
                format!("{} users in one request, at most {}", updates.len(), self.limits.max_batch_events),
            ));
        }
        let entry = self.project(project_id)?;
        let mut valid = Vec::with_capacity(updates.len());
        let mut rejected = Vec::new();
        for (index, update) in updates.into_iter().enumerate() {
            let checked = update.and_then(|u| match ingest::validate_user_update(index, &u, &self.limits) {
                Ok(()) => Ok(u),
                Err(error) => Err((u.user_id, error)),
            });
            match checked {
                Ok(update) => valid.push(update),
                Err((user_id, error)) => {
                    rejected.push(ingest::ItemError { index: index as u32, event_id: user_id, error })
                }
            }
        }
        if valid.is_empty() {
            return Ok((0, rejected));
        }
        let updated = valid.len() as u64;
        let record = LogRecord::Users { project: project_id.to_owned(), at: now_micros(), updates: valid };
        self.write(entry, vec![record], vec![]).await?;
        Ok((updated, rejected))
    }

    pub async fn alias(&self, project_id: &str, anonymous_id: String, user_id: String) -> Result<()> {
        let entry = self.project(project_id)?;
        for (field, id) in [("anonymous_id", &anonymous_id), ("user_id", &user_id)] {
            if id.is_empty() {
                return Err(Error::invalid(field, "must not be empty"));
            }
            ingest::validate_user_id(field, id)?;
        }
        let record = LogRecord::Alias { project: project_id.to_owned(), anonymous_id, user_id };
        self.write(entry, vec![record], vec![]).await?;
        Ok(())
    }

    /// Re-checks quarantined events against the current plan and stores the ones that pass.
    pub async fn replay_quarantined(&self, project_id: &str, ids: &[u64]) -> Result<ReplayOutcome> {
        let entry = self.project(project_id)?;
        let now = now_micros();
        let mut outcome = ReplayOutcome::default();
        let (passing, leaving) = {
            let state = entry.read();
            let selected: Vec<&QuarantinedEvent> = if ids.is_empty() {
                state.quarantine.values().collect()
            } else {
                let mut selected = Vec::with_capacity(ids.len());
                for id in ids {
                    let found = state.quarantine.get(id);
                    selected.push(found.ok_or_else(|| Error::NotFound(format!("quarantined event {id} not found")))?);
                }
                selected
            };
            let mut passing = Vec::new();
            let mut leaving = Vec::new();
            for entry in selected {
                let mut event = entry.event.clone();
                if ingest::validate_event(&mut event, 0, &self.limits, now).is_err() {
                    outcome.rejected += 1;
                    continue;
                }
                let plan = state.event_types.get(&event.name);
                if !super::catalog::violations(&event, plan).is_empty() {
                    outcome.remaining += 1;
                    continue;
                }
                passing.push(event);
                leaving.push(entry.id);
            }
            (passing, leaving)
        };
        if leaving.is_empty() {
            return Ok(outcome);
        }
        let (records, keys) = self.event_records(project_id, passing, vec![], leaving);
        let written = self.write(entry, records, keys).await?;
        outcome.accepted = written.accepted;
        outcome.duplicates = written.duplicates;
        Ok(outcome)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    pub remaining: u64,
    pub rejected: u64,
}
